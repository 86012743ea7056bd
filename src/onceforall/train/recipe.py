"""Training recipes as data: a supernet, a dataset and a list of progressive-shrinking phases.

A recipe is read from YAML with strict checking: an unknown key or a value of the wrong type is
a ConfigError naming the key, before any training starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from onceforall.errors import ConfigError

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "mbv3": {
        "width_mult": 1.0,
        "ks_list": [3, 5, 7],
        "expand_ratio_list": [3, 4, 6],
        "depth_list": [2, 3, 4],
    },
    "proxyless": {
        "width_mult": 1.0,
        "ks_list": [3, 5, 7],
        "expand_ratio_list": [3, 4, 6],
        "depth_list": [2, 3, 4],
    },
    "resnet50": {
        "depth_list": [0, 1, 2],
        "expand_ratio_list": [0.2, 0.25, 0.35],
        "width_mult_list": [0.65, 0.8, 1.0],
    },
}
FAMILY_BN_EPS = {"mbv3": 1e-5, "proxyless": 1e-3, "resnet50": 1e-5}
FAMILY_STRIDES = {"mbv3": [2, 2, 2, 1, 2], "proxyless": [2, 2, 2, 1, 2, 1], "resnet50": [1, 2, 2, 2]}
# The elastic dimension each phase key shrinks, and the net list that bounds it.
PHASE_KEYS = {
    "ks": "ks_list",
    "expand": "expand_ratio_list",
    "depth": "depth_list",
    "width": "width_mult_list",
}


@dataclass(frozen=True)
class NetConfig:
    """The supernet: its family and constructor arguments (in_channels and n_classes come from the data).

    Lists left out take the family's official values; `width_mult` and `ks_list` belong to the
    MBConv families (mbv3, proxyless), `width_mult_list` to resnet50.
    """

    family: str = "mbv3"
    width_mult: float | None = None
    ks_list: list[int] | None = None
    expand_ratio_list: list[float] | None = None
    depth_list: list[int] | None = None
    width_mult_list: list[float] | None = None
    first_stride: int = 2
    stage_strides: list[int] | None = None
    dropout_rate: float = 0.1
    bn_momentum: float = 0.1
    bn_eps: float | None = None

    def lists(self) -> dict[str, Any]:
        """The family's elastic lists with this recipe's values filled in."""
        defaults = FAMILY_DEFAULTS[self.family]
        return {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in defaults.items()}

    def build_args(self, n_classes: int, in_channels: int, resolutions: list[int]) -> dict[str, Any]:
        """Constructor arguments of the family's supernet class."""
        return {
            "n_classes": n_classes,
            "bn_param": (
                self.bn_momentum,
                FAMILY_BN_EPS[self.family] if self.bn_eps is None else self.bn_eps,
            ),
            "dropout_rate": self.dropout_rate,
            **self.lists(),
            "in_channels": in_channels,
            "first_stride": self.first_stride,
            "stage_strides": self.stage_strides or FAMILY_STRIDES[self.family],
            "resolutions": resolutions,
        }


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how much of its training split is held out, and how it is augmented."""

    name: str = "fashion-mnist"
    root: str | None = None
    limit: int | None = None
    holdout: int = 10000
    resolutions: list[int] = field(default_factory=lambda: [128, 160, 192, 224])
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip: bool = True
    batch_size: int = 256
    eval_batch_size: int = 500
    workers: int = 4


@dataclass(frozen=True)
class Phase:
    """One stage of progressive shrinking: which choices are elastic, for how long, how fast."""

    name: str
    epochs: int
    lr: float
    warmup_epochs: int = 0
    warmup_lr: float | None = None
    subnets_per_step: int = 1
    ks: list[int] | None = None
    expand: list[float] | None = None
    depth: list[int] | None = None
    width: list[float] | None = None
    sort_channels: int | None = None
    sandwich: bool = False
    train_largest: bool = False
    distill: bool = True


@dataclass(frozen=True)
class Recipe:
    """Everything one `ofa train` run needs."""

    phases: list[Phase]
    net: NetConfig = field(default_factory=NetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    bn_calibration_images: int = 2000
    bn_calibration_batch: int = 200
    bn_calibration_augment: bool = False
    validate_every: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    tensorboard: bool = False
    no_progressive_shrinking: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(value: Any, hint: Any, key: str) -> Any:
    """Convert `value` to the annotated type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        return _check(value, next(o for o in options if o is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'the recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {key}" if key else ""
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {unknown}{where}; allowed: {sorted(names)}"
        )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{key or 'the recipe'} is missing required key(s) {missing}")
    prefix = f"{key}." if key else ""
    return cls(**{name: _check(value, hints[name], prefix + name) for name, value in data.items()})


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    recipe = _build(Recipe, data, "")
    _check_net(recipe.net)
    if not recipe.phases:
        raise ConfigError("phases is empty; a recipe needs at least one phase")
    for i, phase in enumerate(recipe.phases):
        if phase.epochs < 0 or phase.warmup_epochs < 0 or phase.subnets_per_step < 1 or phase.lr <= 0:
            raise ConfigError(
                f"phases[{i}] ({phase.name}): epochs >= 0, subnets_per_step >= 1 and lr > 0 required"
            )
        if phase.sandwich and phase.subnets_per_step < 2:
            raise ConfigError(
                f"phases[{i}] ({phase.name}): sandwich trains the largest and the smallest subnet "
                "each step, so subnets_per_step must be at least 2"
            )
        if phase.train_largest and phase.subnets_per_step < 2:
            raise ConfigError(
                f"phases[{i}] ({phase.name}): train_largest trains the largest subnet plus sampled ones "
                "each step, so subnets_per_step must be at least 2"
            )
        lists = recipe.net.lists()
        for name, net_key in PHASE_KEYS.items():
            chosen = getattr(phase, name)
            if chosen is None:
                continue
            if net_key not in lists:
                elastic = [k for k, v in PHASE_KEYS.items() if v in lists]
                raise ConfigError(
                    f"phases[{i}].{name}: family {recipe.net.family} has no elastic {net_key}; its phases "
                    f"choose among {elastic}"
                )
            if not chosen or not set(chosen) <= set(lists[net_key]):
                raise ConfigError(
                    f"phases[{i}].{name} = {chosen} is not a subset of net.{net_key} {lists[net_key]} (or is empty)"
                )
    return recipe


def _check_net(net: NetConfig) -> None:
    if net.family not in FAMILY_DEFAULTS:
        raise ConfigError(f"net.family = {net.family!r}; choose one of {sorted(FAMILY_DEFAULTS)}")
    foreign = [k for k in ("width_mult", "ks_list", "width_mult_list") if getattr(net, k) is not None]
    foreign = [k for k in foreign if k not in FAMILY_DEFAULTS[net.family]]
    if foreign:
        raise ConfigError(
            f"net.{foreign[0]} is not an argument of family {net.family}; its lists are "
            f"{sorted(FAMILY_DEFAULTS[net.family])}"
        )


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a YAML recipe."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist; see configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return recipe_from_dict(data or {})
