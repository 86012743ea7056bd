"""Reading checkpoint files safely, and loading official-layout state dicts into our networks.

Everything that opens a `.pt`/`.pth` file goes through `read_file` (`weights_only=True`: a file can
hold tensors and plain containers, never code). This module sits just above `spaces/` and below
the registry, the zoo and the trainer, so all of them read files the same way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.errors import CheckpointError
from onceforall.nn.keys import map_official_keys
from onceforall.spaces.common import load_checked

SUPERNET_FORMAT = "onceforall.supernet"
STATE_FORMAT = "onceforall.train-state"


def read_file(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a dict, with one clear error for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist (files cannot be downloaded here)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding arbitrary objects
        detail = str(err).splitlines()[0] if str(err) else "no detail"
        if detail.startswith("Weights only load failed"):
            # torch's advice (weights_only=False) would run code from the file: never give it.
            detail = "it is not a PyTorch file, or it holds objects other than tensors and plain containers"
        raise CheckpointError(
            f"cannot read {what} {path} with weights_only=True ({type(err).__name__}: {detail[:300]}); "
            "is it a PyTorch checkpoint, and was it copied whole?"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} holds a {type(data).__name__}, not a dict")
    return data


def state_dict_of(checkpoint: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file or dict: `{'state_dict': ...}` unwrapped, `module.` stripped."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_file(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint['state_dict'] must be a dict, got {type(state).__name__}")
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"the checkpoint holds no tensors (keys: {sorted(map(str, state))[:5]})")
    return tensors


def check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or infinite weights (a diverged run, a damaged copy): they evaluate at chance, silently."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{where} holds non-finite values in tensor {key!r} ({bad} of {tensor.numel()} NaN or inf); "
                "the file is damaged or comes from a diverged run: use an earlier checkpoint"
            )


def describe(net: nn.Module) -> str:
    space = getattr(net, "search_space", None)
    return f"{type(net).__name__} ({space().name})" if callable(space) else type(net).__name__


def load_official(
    net: nn.Module, checkpoint: str | Path | Mapping, hint: Callable[[], str] | None = None
) -> nn.Module:
    """Load an official (or our) checkpoint into `net`, strictly, with errors that say what is wrong.

    The one tolerated gap: a static teacher checkpoint (e.g. `ofa_D4_E6_K7`) has no kernel
    transformation matrices; they are set to identity, with a warning. `hint()` ends the error
    message (the likely cause, as the caller knows it; computed only when there is an error).
    """
    state = state_dict_of(checkpoint)
    check_finite(state, "the checkpoint")
    own = nn.Module.state_dict(net)
    mapping = map_official_keys(state, set(own))
    unknown = [k for k in state if k not in mapping]
    targets: dict[str, list[str]] = {}
    for key, name in mapping.items():
        targets.setdefault(name, []).append(key)
    clashes = [keys for keys in targets.values() if len(keys) > 1]
    missing = [k for k in own if k not in targets]
    matrices = [k for k in missing if k.endswith("_matrix")]
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in matrices and k not in counters]
    shapes = [
        f"{key}: file {list(state[key].shape)} vs model {list(own[name].shape)}"
        for key, name in mapping.items()
        if state[key].shape != own[name].shape
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys of the file fit no layer, e.g. {unknown[:4]}")
    if clashes:
        problems.append(f"keys that land on the same tensor: {clashes[:3]}")
    if missing:
        problems.append(f"{len(missing)} tensors of the model are missing from the file, e.g. {missing[:4]}")
    if matrices and len(matrices) != len([k for k in own if k.endswith("_matrix")]):
        problems.append(f"the file has some kernel matrices but lacks {matrices[:4]}")
    if shapes:
        problems.append(f"{len(shapes)} tensors have another shape, e.g. " + "; ".join(shapes[:3]))
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {describe(net)}: "
            + "; ".join(problems)
            + ". "
            + (hint() if hint is not None else _class_hint(state, net))
        )
    new_state = dict(own)
    new_state.update({name: state[key] for key, name in mapping.items()})
    for key in matrices:
        new_state[key] = torch.eye(own[key].shape[0], dtype=own[key].dtype)
    if matrices:
        warnings.warn(
            f"the checkpoint has no kernel transformation matrices (a static teacher such as ofa_D4_E6_K7); "
            f"the {len(matrices)} `*_matrix` tensors are set to identity, so smaller kernels start as "
            "centre crops of the largest one",
            stacklevel=2,
        )
    load_checked(net, new_state)
    return net


def guess_net_id(state: Mapping[str, torch.Tensor]) -> str | None:
    """The official supernet id whose layout a state dict looks like (None if none does)."""
    keys = {k.replace(".mobile_inverted_conv.", ".conv.") for k in state}
    if any(k.startswith("input_stem.") for k in keys):
        return "ofa_resnet50"
    first = state.get("first_conv.conv.weight")
    if first is None:
        return None
    if any(k.startswith("final_expand_layer.") for k in keys):
        return {16: "ofa_mbv3_d234_e346_k357_w1.0", 24: "ofa_mbv3_d234_e346_k357_w1.2"}.get(first.shape[0])
    if any(k.startswith("feature_mix_layer.bn") for k in keys) and first.shape[0] == 40:
        return "ofa_proxyless_d234_e346_k357_w1.3"
    return None


def _class_hint(state: Mapping[str, torch.Tensor], net: nn.Module) -> str:
    hints = []
    guess = guess_net_id(state)
    space = getattr(net, "search_space", None)
    ours = space().name if callable(space) else None
    if guess is not None and guess != ours:
        hints.append(f"the file looks like {guess!r}: build that id (zoo.ofa_net({guess!r}, ...))")
    n_classes = classes_in(state)
    if n_classes is not None and n_classes != getattr(net, "n_classes", n_classes):
        hints.append(f"the file classifies {n_classes} classes: pass n_classes={n_classes}")
    if not hints:
        hints.append(
            "likely causes: another net id or width multiplier, other kernel/expand/depth lists, another "
            "class count, or a specialized net's weights loaded into a supernet (use zoo.ofa_specialized)"
        )
    return "; ".join(hints) + "."


def classes_in(state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of a state dict's classifier (None if it has none we know)."""
    for key in ("classifier.linear.weight", "classifier.linear.linear.weight"):
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[0])
    return None


def input_channels_in(state: Mapping[str, torch.Tensor]) -> int | None:
    """The input channels of a state dict's first convolution (None if it has none we know)."""
    for key in ("first_conv.conv.weight", "input_stem.0.conv.weight", "input_stem.0.conv.conv.weight"):
        if key in state and state[key].dim() == 4:
            return int(state[key].shape[1])
    return None
