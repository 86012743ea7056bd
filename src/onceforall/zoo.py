"""The official model zoo: supernet ids, specialized-net names and checkpoint files.

Files cannot be downloaded here: `ofa_net` and `ofa_specialized` take local paths (or
already-loaded dicts). Official checkpoints in the old (`mobile_inverted_conv`) and current key
layouts load with `weights_only=True`; unlike the original loader, anything that does not fit
is an error that names the keys and the likely cause.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from onceforall.errors import CheckpointError, ConfigError, OFAError, PredictorError
from onceforall.io import save_atomic
from onceforall.spaces.common import load_checked
from onceforall.spaces.mobilenet_v3 import MobileNetV3, OFAMobileNetV3
from onceforall.spaces.proxyless import OFAProxylessNASNets, ProxylessNASNets
from onceforall.spaces.resnet import OFAResNets, ResNets

MBV3_LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}

SUPERNETS: dict[str, Callable[..., nn.Module]] = {
    "ofa_mbv3_d234_e346_k357_w1.0": lambda **kw: OFAMobileNetV3(width_mult=1.0, **MBV3_LISTS, **kw),
    "ofa_mbv3_d234_e346_k357_w1.2": lambda **kw: OFAMobileNetV3(width_mult=1.2, **MBV3_LISTS, **kw),
    "ofa_proxyless_d234_e346_k357_w1.3": lambda **kw: OFAProxylessNASNets(width_mult=1.3, **MBV3_LISTS, **kw),
    "ofa_resnet50": lambda **kw: OFAResNets(
        depth_list=[0, 1, 2], expand_ratio_list=[0.2, 0.25, 0.35], width_mult_list=[0.65, 0.8, 1.0], **kw
    ),
}

# Supernets trained by this project and shipped inside the package (files under onceforall/pretrained/),
# each with the accuracy predictor fitted on its accuracy dataset.
PRETRAINED = {"ofa_mbv3_fashion_mnist": "ofa_mbv3_fashion_mnist.pt"}
PRETRAINED_PREDICTORS = {"ofa_mbv3_fashion_mnist": "ofa_mbv3_fashion_mnist.predictor.pt"}

NETWORKS: dict[str, type[nn.Module]] = {
    "MobileNetV3": MobileNetV3,
    "ProxylessNASNets": ProxylessNASNets,
    "ResNets": ResNets,
}


def _expand(pattern: str, items: str) -> list[str]:
    return [pattern.format(item) for item in items.split()]


# Official specialized nets (`ofa_specialized/<name with '@' as '-'>/{net.config, run.config, init}`).
SPECIALIZED_NETS: tuple[str, ...] = tuple(
    _expand("flops@{}_finetune@75", "595M_top1@80.0 482M_top1@79.6 389M_top1@79.1")
    + _expand(
        "resnet50D_MAC@{}", "4.1B_top1@79.8 3.7B_top1@79.7 3.0B_top1@79.3 2.4B_top1@79.0 1.8B_top1@78.3"
    )
    + _expand("resnet50D_MAC@{}_finetune@25", "1.2B_top1@77.1 0.9B_top1@76.3 0.6B_top1@75.0")
    + _expand("pixel1_lat@{}_finetune@75", "143ms_top1@80.1 132ms_top1@79.8 79ms_top1@78.7 58ms_top1@76.9")
    + _expand("pixel1_lat@{}_finetune@25", "40ms_top1@74.9 28ms_top1@73.3 20ms_top1@71.4")
    + _expand("pixel2_lat@{}_finetune@25", "62ms_top1@75.8 50ms_top1@74.7 35ms_top1@73.4 25ms_top1@71.5")
    + _expand("note10_lat@{}_finetune@75", "64ms_top1@80.2 50ms_top1@79.7 41ms_top1@79.3 30ms_top1@78.4")
    + _expand("note10_lat@{}_finetune@25", "22ms_top1@76.6 16ms_top1@75.5 11ms_top1@73.6 8ms_top1@71.4")
    + _expand("note8_lat@{}_finetune@25", "65ms_top1@76.1 49ms_top1@74.9 31ms_top1@72.8 22ms_top1@70.4")
    + _expand("s7edge_lat@{}_finetune@25", "88ms_top1@76.3 58ms_top1@74.7 41ms_top1@73.1 29ms_top1@70.5")
    + _expand("LG-G8_lat@{}_finetune@25", "24ms_top1@76.4 16ms_top1@74.7 11ms_top1@73.0 8ms_top1@71.1")
    + _expand("1080ti_gpu64@{}_finetune@25", "27ms_top1@76.4 22ms_top1@75.3 15ms_top1@73.8 12ms_top1@72.6")
    + _expand("v100_gpu64@{}_finetune@25", "11ms_top1@76.1 9ms_top1@75.3 6ms_top1@73.0 5ms_top1@71.6")
    + _expand("tx2_gpu16@{}_finetune@25", "96ms_top1@75.8 80ms_top1@75.4 47ms_top1@72.9 35ms_top1@70.3")
    + _expand("cpu_lat@{}_finetune@25", "17ms_top1@75.7 15ms_top1@74.6 11ms_top1@72.0 10ms_top1@71.1")
)

# (checkpoint spelling, model spelling): single nesting of static layers vs double of dynamic ones.
NESTING_RULES = (
    (".bn.bn.", ".bn."),
    (".conv.conv.weight", ".conv.weight"),
    (".linear.linear.", ".linear."),
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)


# ---------------------------------------------------------------------------------------------- networks
def ofa_net(
    net_id: str, checkpoint: str | Path | Mapping | None = None, *, n_classes: int = 1000, **kwargs: Any
) -> nn.Module:
    """The supernet of an official id with the zoo's settings (dropout 0), random or from a checkpoint.

    `checkpoint` is a local file (or loaded dict) in the official layout; `n_classes` and other
    keyword arguments go to the constructor (e.g. `resolutions=...`).
    """
    if net_id in PRETRAINED:
        from onceforall.train.checkpoint import load_supernet

        return load_supernet(pretrained_path(net_id))[0]
    if net_id not in SUPERNETS:
        raise OFAError(f"unknown net id {net_id!r}; known ids: {sorted(SUPERNETS) + sorted(PRETRAINED)}")
    net = SUPERNETS[net_id](n_classes=n_classes, **{"dropout_rate": 0.0, **kwargs})
    if checkpoint is not None:
        load_official(net, checkpoint)
    return net


def pretrained_path(net_id: str) -> Path:
    """The shipped weights of a project-trained supernet (`PRETRAINED`)."""
    path = Path(__file__).parent / "pretrained" / PRETRAINED[net_id]
    if not path.is_file():
        raise CheckpointError(
            f"{net_id}: {path} is not in this installation; train it with "
            "`ofa train --config configs/fashion_mnist.yaml` and pass the run's supernet.pt instead"
        )
    return path


def pretrained_predictor_path(net_id: str) -> Path:
    """The shipped accuracy predictor of a project-trained supernet (`PRETRAINED_PREDICTORS`)."""
    if net_id not in PRETRAINED_PREDICTORS:
        raise PredictorError(
            f"{net_id} ships no accuracy predictor; pass --predictor (make one with `ofa acc-dataset` "
            "and `ofa predictor fit`)"
        )
    path = Path(__file__).parent / "pretrained" / PRETRAINED_PREDICTORS[net_id]
    if not path.is_file():
        raise PredictorError(
            f"{net_id}: {path} is not in this installation; make it with `ofa acc-dataset` and "
            "`ofa predictor fit` (see docs/specialize.md)"
        )
    return path


def ofa_specialized(
    net_config: str | Path | Mapping[str, Any], checkpoint: str | Path | Mapping | None = None
) -> nn.Module:
    """A specialized net from an official `net.config` (dict, JSON file or the net's folder) and weights.

    Given a folder, reads `net.config` and, unless `checkpoint` is given, its `init` weights.
    Without weights the net keeps its random initialisation. The input size is in `run.config`.
    """
    config = net_config
    if not isinstance(config, Mapping):
        path = Path(config)
        if path.is_dir():
            if checkpoint is None and (path / "init").is_file():
                checkpoint = path / "init"
            path = path / "net.config"
        if not path.is_file():
            raise ConfigError(f"net config {path} does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"net config {path} is not valid JSON: {err}") from None
    net = build_network(config)
    if checkpoint is not None:
        load_official(net, checkpoint)
    return net


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """A static network (MobileNetV3, ProxylessNASNets or ResNets) from its official config."""
    name = config.get("name") if isinstance(config, Mapping) else None
    if name not in NETWORKS:
        raise ConfigError(f"net config names network {name!r}; expected one of {sorted(NETWORKS)}")
    try:
        return NETWORKS[name].build_from_config(json.loads(json.dumps(config)))
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"net config of {name} is malformed: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(checkpoint: str | Path | Mapping) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file or dict: `{'state_dict': ...}` unwrapped, `module.` stripped."""
    if isinstance(checkpoint, (str, os.PathLike)):
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist (files cannot be downloaded here)")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(
                f"cannot read checkpoint {path} with weights_only=True: {type(err).__name__}: {err}"
            ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint['state_dict'] must be a dict, got {type(state).__name__}")
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"the checkpoint holds no tensors (keys: {sorted(state)[:5]})")
    return tensors


def official_to_model_keys(state: Mapping[str, torch.Tensor], model_keys: set[str]) -> dict[str, str]:
    """Map each checkpoint key onto a key of the model (old block names, static/dynamic nesting).

    Keys that map nowhere are left out; `load_official` reports them.
    """
    mapping: dict[str, str] = {}
    for key in state:
        name = key.replace(".mobile_inverted_conv.", ".conv.")
        if name not in model_keys:
            candidates = (name.replace(old, new) for old, new in NESTING_RULES if old in name)
            name = next((c for c in candidates if c in model_keys), name)
        if name in model_keys:
            mapping[key] = name
    return mapping


def load_official(net: nn.Module, checkpoint: str | Path | Mapping) -> nn.Module:
    """Load an official (or our) checkpoint into `net`, strictly, with errors that say what is wrong.

    The one tolerated gap: a static teacher checkpoint (e.g. `ofa_D4_E6_K7`) has no kernel
    transformation matrices; they are set to identity, with a warning.
    """
    state = read_checkpoint(checkpoint)
    own = nn.Module.state_dict(net)
    mapping = official_to_model_keys(state, set(own))
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
            f"checkpoint does not fit {_describe(net)}: "
            + "; ".join(problems)
            + ". "
            + _likely_cause(state, net)
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


def _describe(net: nn.Module) -> str:
    space = getattr(net, "search_space", None)
    return f"{type(net).__name__} ({space().name})" if callable(space) else type(net).__name__


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


def _likely_cause(state: Mapping[str, torch.Tensor], net: nn.Module) -> str:
    hints = []
    guess = guess_net_id(state)
    space = getattr(net, "search_space", None)
    ours = space().name if callable(space) else None
    if guess is not None and guess != ours:
        hints.append(f"the file looks like {guess!r}: build that id (zoo.ofa_net({guess!r}, ...))")
    for key in ("classifier.linear.weight", "classifier.linear.linear.weight"):
        if key in state and hasattr(net, "n_classes") and state[key].shape[0] != net.n_classes:
            hints.append(
                f"the file classifies {state[key].shape[0]} classes: pass n_classes={state[key].shape[0]}"
            )
    if not hints:
        hints.append(
            "likely causes: another net id or width multiplier, other kernel/expand/depth lists, "
            "another class count, or a specialized net's weights loaded into a supernet (use ofa_specialized)"
        )
    return "; ".join(hints) + "."


def official_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """`net`'s tensors under the official key names (current layout), detached on the CPU."""
    if not isinstance(net, (OFAMobileNetV3, OFAProxylessNASNets, OFAResNets, *NETWORKS.values())):
        raise OFAError(
            f"save_official takes one of our supernets or extracted subnets, got {type(net).__name__}"
        )
    return {k: v.detach().cpu().clone() for k, v in nn.Module.state_dict(net).items()}


def save_official(net: nn.Module, path: str | Path) -> Path:
    """Write `{'state_dict': ...}` in the official layout, atomically (temporary file, then rename)."""
    return save_atomic({"state_dict": official_state_dict(net)}, path)
