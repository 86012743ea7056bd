"""The supernet registry: every supernet id, and `load_supernet`, the one way from a name or file to a supernet.

An id names a family (which supernet class), its constructor arguments and, for supernets this
project trained, the shipped weights and accuracy predictor. `load_supernet` takes an id, a
supernet file written by `ofa train`, or an official checkpoint file (its id given, or recognised
from its keys and shapes). Nothing else builds a supernet from a name.
"""

from __future__ import annotations

import difflib
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from onceforall.checkpoints import (
    STATE_FORMAT,
    SUPERNET_FORMAT,
    classes_in,
    guess_net_id,
    input_channels_in,
    load_official,
    read_file,
    state_dict_of,
)
from onceforall.errors import CheckpointError, OFAError, PredictorError
from onceforall.io import save_atomic
from onceforall.spaces.common import Supernet
from onceforall.spaces.mobilenet_v3 import SMALL_INPUT_STRIDES, OFAMobileNetV3
from onceforall.spaces.proxyless import OFAProxylessNASNets
from onceforall.spaces.resnet import OFAResNets

FAMILIES: dict[str, type[Supernet]] = {
    "mbv3": OFAMobileNetV3,
    "proxyless": OFAProxylessNASNets,
    "resnet50": OFAResNets,
}
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass(frozen=True)
class Entry:
    """One registered supernet: its family, constructor arguments and shipped files (if any)."""

    id: str
    family: str
    kwargs: dict[str, Any]
    summary: str
    weights: str | None = None  # a supernet file under onceforall/pretrained/
    predictor: str | None = None  # its accuracy predictor, ditto
    official: bool = False  # an id of the official model zoo
    elastic: tuple[str, ...] = field(default=())

    def build(self, **overrides: Any) -> Supernet:
        """The supernet with random weights (`overrides` replace constructor arguments)."""
        return FAMILIES[self.family](**{**self.kwargs, **overrides})

    @property
    def weights_path(self) -> Path | None:
        return None if self.weights is None else PRETRAINED_DIR / self.weights

    @property
    def predictor_path(self) -> Path | None:
        return None if self.predictor is None else PRETRAINED_DIR / self.predictor


_MBCONV_LISTS = {"ks_list": [3, 5, 7], "expand_ratio_list": [3, 4, 6], "depth_list": [2, 3, 4]}
_RESNET_LISTS = {
    "depth_list": [0, 1, 2],
    "expand_ratio_list": [0.2, 0.25, 0.35],
    "width_mult_list": [0.65, 0.8, 1.0],
}
_MBCONV_ELASTIC = ("kernel size", "expand ratio", "depth", "resolution")
_RESNET_ELASTIC = ("depth (stem skip included)", "expand ratio", "width multiplier", "resolution")
# Small images (24-32 px, one channel): total stride 8, ten classes, as Fashion-MNIST.
_SMALL = {"n_classes": 10, "in_channels": 1, "first_stride": 1, "dropout_rate": 0.0, "resolutions": [24, 28]}


def _entries() -> dict[str, Entry]:
    entries = [
        Entry(
            "ofa_mbv3_d234_e346_k357_w1.0",
            "mbv3",
            {"width_mult": 1.0, "dropout_rate": 0.0, **_MBCONV_LISTS},
            "OFA-MobileNetV3 w1.0, ImageNet (official)",
            official=True,
            elastic=_MBCONV_ELASTIC,
        ),
        Entry(
            "ofa_mbv3_d234_e346_k357_w1.2",
            "mbv3",
            {"width_mult": 1.2, "dropout_rate": 0.0, **_MBCONV_LISTS},
            "OFA-MobileNetV3 w1.2, ImageNet (official)",
            official=True,
            elastic=_MBCONV_ELASTIC,
        ),
        Entry(
            "ofa_proxyless_d234_e346_k357_w1.3",
            "proxyless",
            {"width_mult": 1.3, "dropout_rate": 0.0, **_MBCONV_LISTS},
            "OFA-ProxylessNAS w1.3, ImageNet (official)",
            official=True,
            elastic=_MBCONV_ELASTIC,
        ),
        Entry(
            "ofa_resnet50",
            "resnet50",
            {"dropout_rate": 0.0, **_RESNET_LISTS},
            "OFA-ResNet50 (ResNet-50-D), ImageNet (official)",
            official=True,
            elastic=_RESNET_ELASTIC,
        ),
        Entry(
            "ofa_mbv3_small",
            "mbv3",
            {"width_mult": 0.5, "stage_strides": list(SMALL_INPUT_STRIDES), **_SMALL, **_MBCONV_LISTS},
            "OFA-MobileNetV3 w0.5 for 1-channel 24-32 px images, 10 classes",
            elastic=_MBCONV_ELASTIC,
        ),
        Entry(
            "ofa_proxyless_small",
            "proxyless",
            {"width_mult": 0.5, "stage_strides": [2, 2, 2, 1, 1, 1], **_SMALL, **_MBCONV_LISTS},
            "OFA-ProxylessNAS w0.5 for 1-channel 24-32 px images, 10 classes",
            elastic=_MBCONV_ELASTIC,
        ),
        Entry(
            "ofa_resnet50_small",
            "resnet50",
            {
                "stage_strides": [1, 2, 2, 1],
                **_SMALL,
                **_RESNET_LISTS,
                "width_mult_list": [0.15, 0.2, 0.25],
            },
            "OFA-ResNet50 at widths 0.15-0.25 for 1-channel 24-32 px images, 10 classes",
            elastic=_RESNET_ELASTIC,
        ),
        Entry(
            "ofa_mbv3_fashion_mnist",
            "mbv3",
            {
                "n_classes": 10,
                "bn_param": [0.1, 1e-5],
                "dropout_rate": 0.1,
                "width_mult": 0.75,
                **_MBCONV_LISTS,
                "in_channels": 1,
                "first_stride": 1,
                "stage_strides": list(SMALL_INPUT_STRIDES),
                "resolutions": [20, 24, 28],
            },
            "OFA-MobileNetV3 w0.75 trained on Fashion-MNIST by this project (configs/fashion_mnist.yaml)",
            weights="ofa_mbv3_fashion_mnist.pt",
            predictor="ofa_mbv3_fashion_mnist.predictor.pt",
            elastic=_MBCONV_ELASTIC,
        ),
    ]
    return {e.id: e for e in entries}


REGISTRY: dict[str, Entry] = _entries()


def registered(official: bool | None = None) -> list[str]:
    """The registered ids (only the official ones, or only the others, if asked)."""
    return [i for i, e in REGISTRY.items() if official is None or e.official == official]


def entry(net_id: str) -> Entry:
    """The registry entry of an id, or an error listing the ids and the closest match."""
    if net_id in REGISTRY:
        return REGISTRY[net_id]
    close = difflib.get_close_matches(str(net_id), list(REGISTRY), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise OFAError(f"unknown supernet id {net_id!r}{hint}; registered ids: {', '.join(REGISTRY)}")


def family_of(net: nn.Module) -> str:
    """The family name of a supernet instance."""
    for name, cls in FAMILIES.items():
        if type(net) is cls:
            return name
    raise OFAError(f"{type(net).__name__} is not a registered supernet family ({', '.join(FAMILIES)})")


def predictor_path(net_id: str) -> Path:
    """The accuracy predictor shipped with a registered supernet."""
    found = REGISTRY.get(net_id)
    path = None if found is None else found.predictor_path
    if path is None:
        raise PredictorError(
            f"{net_id} ships no accuracy predictor; pass --predictor (make one with `ofa acc-dataset` "
            "and `ofa predictor fit`, see docs/specialize.md)"
        )
    if not path.is_file():
        raise PredictorError(f"{net_id}: {path} is not in this installation; reinstall onceforall")
    return path


# --------------------------------------------------------------------------------------------- files
def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (in key order)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_supernet(net: Supernet, path: str | Path, **extra: Any) -> Path:
    """Weights, family and constructor arguments (all `load_supernet` needs), written atomically.

    The file carries a SHA-256 of its tensors, checked on load: a corrupted file is an error, not
    a silently worse network.
    """
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    payload = {
        "format": SUPERNET_FORMAT,
        "family": family_of(net),
        "build_args": net.build_args,
        "state_dict": state,
        "sha256": tensor_digest(state),
        **extra,
    }
    return save_atomic(payload, path)


class LoadedSupernet(NamedTuple):
    """A supernet and what its source said about it (`recipe`, `history`, `net_id`, `source`, ...)."""

    net: Supernet
    info: dict[str, Any]


def load_supernet(
    name_or_path: str | Path,
    checkpoint: str | Path | None = None,
    net_id: str | None = None,
    *,
    resolutions: Sequence[int] | None = None,
) -> LoadedSupernet:
    """A supernet from a registry id, a supernet file written by `ofa train`, or an official checkpoint.

    - an id: random weights, or the shipped ones for a supernet this project trained; with
      `checkpoint`, the weights of that file (ours or official);
    - a supernet file (`ofa train`'s `supernet.pt`, `phase*_*.pt`): rebuilt from its family and
      constructor arguments, its tensors checked against their SHA-256;
    - an official checkpoint file (`{'state_dict': ...}` in the official layouts): built as `net_id`,
      or as the id its keys and shapes are recognised as; the class count and input channels are
      read from the file.

    `resolutions` replaces the search space's input sizes (e.g. time a table at 160 and 224 only).
    """
    name = str(name_or_path)
    overrides = {} if resolutions is None else {"resolutions": _check_resolutions(resolutions)}
    if name in REGISTRY:
        if net_id is not None and net_id != name:
            raise OFAError(f"--net-id {net_id!r} contradicts the supernet id {name!r}; give only one")
        found = REGISTRY[name]
        if checkpoint is not None:
            return _load_file(Path(checkpoint), found.id, overrides)
        if found.weights_path is not None:
            if not found.weights_path.is_file():
                raise CheckpointError(f"{found.id}: {found.weights_path} is missing; reinstall onceforall")
            loaded = _load_file(found.weights_path, None, overrides)
            loaded.info["net_id"] = found.id
            return loaded
        return LoadedSupernet(found.build(**overrides), {"net_id": found.id, "source": "random weights"})
    if not Path(name).is_file():
        close = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OFAError(
            f"{name!r} is neither a registered supernet id nor an existing file{hint}; "
            f"registered ids: {', '.join(REGISTRY)} (`ofa list` describes them)"
        )
    if checkpoint is not None:
        raise OFAError(f"--checkpoint goes with a registry id; {name} is a file already: pass it alone")
    if net_id is not None:
        entry(net_id)
    return _load_file(Path(name), net_id, overrides)


def _check_resolutions(resolutions: Sequence[int]) -> list[int]:
    values = list(resolutions)
    if not values or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in values):
        raise OFAError(f"resolutions must be positive integers, e.g. 160,224; got {values}")
    return sorted(set(values))


def _load_file(path: Path, net_id: str | None, overrides: dict[str, Any]) -> LoadedSupernet:
    data = read_file(path, "supernet file")
    kind = data.get("format")
    if kind == SUPERNET_FORMAT:
        if net_id is not None and REGISTRY[net_id].weights is None:
            # An id with a file of ours: the file says what it is; the id must agree.
            expected = REGISTRY[net_id].family
            if data.get("family", "mbv3") != expected:
                raise OFAError(f"{path} is a {data.get('family')} supernet, not the {expected} of {net_id!r}")
        return _ours(path, data, overrides)
    if kind == STATE_FORMAT:
        raise CheckpointError(
            f"{path} is a training state (checkpoint.pt of `ofa train`), not a supernet; use the run's "
            "supernet.pt or a phase file (phaseN_NAME.pt), or resume the run with `ofa train --resume`"
        )
    if kind is not None:
        raise CheckpointError(f"{path} is a file of format {kind!r}, not a supernet or a checkpoint")
    return _official(path, data, net_id, overrides)


def _ours(path: Path, data: dict[str, Any], overrides: dict[str, Any]) -> LoadedSupernet:
    family = data.get("family", "mbv3")  # files written before families were recorded are MBv3
    if family not in FAMILIES or not isinstance(data.get("build_args"), dict):
        raise CheckpointError(
            f"{path}: unknown family {family!r} or no build_args; was it written by onceforall?"
        )
    state = data.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; the file is damaged")
    if "sha256" not in data:
        warnings.warn(
            f"{path} carries no checksum of its tensors (it was written before onceforall recorded one), "
            "so a corrupted copy cannot be told from a good one; save it again with "
            "onceforall.registry.save_supernet to add one",
            stacklevel=3,
        )
    elif tensor_digest(state) != data["sha256"]:
        raise CheckpointError(
            f"{path} is corrupted: its tensors do not match the SHA-256 recorded when it was written; "
            "copy the file again or retrain"
        )
    _check_finite(path, state)
    try:
        net = FAMILIES[family](**{**data["build_args"], **overrides})
    except TypeError as err:
        raise CheckpointError(
            f"{path}: its build_args do not fit {FAMILIES[family].__name__}: {err}"
        ) from None
    net.load_state_dict(state)
    info = {k: v for k, v in data.items() if k != "state_dict"}
    info.update(source=str(path), file_sha256=data.get("sha256") or tensor_digest(state))
    return LoadedSupernet(net, info)


def _check_finite(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{path}: tensor {key} holds NaN or infinite values; the weights are unusable"
            )


def _build_for(found: Entry, state: Mapping[str, torch.Tensor], overrides: dict[str, Any]) -> Supernet:
    """`found`'s supernet with the class count and input channels of the file."""
    sized = dict(overrides)
    for name, value in (("n_classes", classes_in(state)), ("in_channels", input_channels_in(state))):
        if value is not None:
            sized[name] = value
    return found.build(**sized)


def _fits(found: Entry, state: Mapping[str, torch.Tensor]) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_official(_build_for(found, state, {}), state)
    except OFAError:
        return False
    return True


def family_in(state: Mapping[str, torch.Tensor]) -> str | None:
    """The family a state dict's key layout belongs to (None if none)."""
    keys = {k.replace(".mobile_inverted_conv.", ".conv.") for k in state}
    if any(k.startswith("input_stem.") for k in keys):
        return "resnet50"
    if any(k.startswith("final_expand_layer.") for k in keys):
        return "mbv3"
    if any(k.startswith("feature_mix_layer.") for k in keys):
        return "proxyless"
    return None


def fitting_ids(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Every registered id whose supernet the state dict loads into (class count and channels aside)."""
    family = family_in(state)
    return [i for i, e in REGISTRY.items() if e.family == family and e.weights is None and _fits(e, state)]


def _official(
    path: Path, data: dict[str, Any], net_id: str | None, overrides: dict[str, Any]
) -> LoadedSupernet:
    state = state_dict_of(data)
    _check_finite(path, state)
    info = {"source": str(path), "format": "official", "file_sha256": tensor_digest(state)}
    if net_id is not None:
        net = _build_for(REGISTRY[net_id], state, overrides)
        try:
            load_official(net, state, hint=lambda: _wrong_id_hint(state, net_id))
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        return LoadedSupernet(net, {"net_id": net_id, **info})
    guess = guess_net_id(state)  # the official layouts, recognised without building anything
    if guess is not None:
        net = _build_for(REGISTRY[guess], state, overrides)
        try:
            load_official(net, state)  # warns only once the file fits
            return LoadedSupernet(net, {"net_id": guess, **info})
        except CheckpointError:
            pass  # same family, other sizes: find the id below
    fits = fitting_ids(state)
    if len(fits) != 1:
        listed = f"it fits {fits}" if fits else "its keys and shapes fit none of the registered supernets"
        raise CheckpointError(
            f"cannot tell which supernet {path} holds ({listed}); pass --net-id, one of: "
            + ", ".join(registered())
        )
    net = _build_for(REGISTRY[fits[0]], state, overrides)
    load_official(net, state)
    return LoadedSupernet(net, {"net_id": fits[0], **info})


def _wrong_id_hint(state: Mapping[str, torch.Tensor], chosen: str) -> str:
    fits = [i for i in fitting_ids(state) if i != chosen]
    if fits:
        return f"Its shapes fit {', '.join(repr(i) for i in fits)}: pass --net-id {fits[0]}."
    return (
        "It fits no registered supernet: another width multiplier, other kernel/expand/depth lists, or a "
        "specialized net's weights (load those with zoo.ofa_specialized)."
    )
