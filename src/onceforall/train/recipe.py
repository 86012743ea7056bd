"""Training recipes as data: a supernet, a dataset and a list of progressive-shrinking phases.

A recipe is read from YAML with strict checking: an unknown key, a value of the wrong type or
outside its field's range is a ConfigError naming the key, the value, the allowed range and the
fix, before any training starts. The ranges sit next to the fields (`Annotated[int, Range(...)]`)
and `_check` is the one place that applies them; the upper bounds keep a run feasible (a
`depth_list: [100]` supernet would never finish a step). Legal but suspicious values (a negative
weight decay, odd resolutions) give a `RecipeWarning`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

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


class RecipeWarning(UserWarning):
    """A recipe value that is legal but probably not what was meant."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field (checked by `_check`), with the fix to suggest."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `low` itself is not allowed
    high_open: bool = False
    odd: bool = False
    fix: str = ""
    warn_below: float | None = None  # legal, but a RecipeWarning below this value
    warning: str = ""

    def describe(self, key: str) -> str:
        name = key.rsplit(".", 1)[-1]
        low = "" if self.low is None else f"{_show(self.low)} {'<' if self.low_open else '<='} "
        high = "" if self.high is None else f" {'<' if self.high_open else '<='} {_show(self.high)}"
        return f"{low}{name}{high}" + (", odd" if self.odd else "")

    def check(self, value: float, key: str) -> None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high or (self.odd and value % 2 != 1):
            fix = f"; {self.fix}" if self.fix else ""
            raise ConfigError(f"{key} = {value!r} is out of range: allowed {self.describe(key)}{fix}")
        if self.warn_below is not None and value < self.warn_below:
            warnings.warn(f"{key} = {value!r}: {self.warning}", RecipeWarning, stacklevel=5)


def _show(bound: float) -> str:
    """A bound as written in a recipe: 1000000000 rather than 1e+09, 0.5 rather than 0.500000."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


@dataclass(frozen=True)
class Length:
    """The allowed number of entries of a list field."""

    low: int
    high: int

    def check(self, value: list, key: str) -> None:
        if not self.low <= len(value) <= self.high:
            raise ConfigError(
                f"{key} has {len(value)} entries: allowed {self.low} to {self.high}"
                + ("" if self.low > 0 else "; leave the key out for the default")
            )


def _int(low: int, high: int, fix: str = "", **kw: Any) -> Any:
    return Annotated[int, Range(low, high, fix=fix, **kw)]


def _float(low: float, high: float, fix: str = "", **kw: Any) -> Any:
    return Annotated[float, Range(low, high, fix=fix, **kw)]


# Upper bounds that keep a run feasible; far above any published setting.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
_POSITIVE = {"low_open": True}
KernelSizes = Annotated[list[_int(1, 11, "kernel sizes are odd, e.g. [3, 5, 7]", odd=True)], Length(1, 6)]
ExpandRatios = Annotated[
    list[_float(0, 8, "e.g. [3, 4, 6] (resnet50: [0.2, 0.25, 0.35])", **_POSITIVE)], Length(1, 6)
]
Depths = Annotated[list[_int(0, 8, "e.g. [2, 3, 4] (resnet50: [0, 1, 2])")], Length(1, 6)]
Widths = Annotated[list[_float(0, 4, "e.g. [0.65, 0.8, 1.0]", **_POSITIVE)], Length(1, 6)]
Chosen = Length(1, 6)  # a phase's subset of a net list

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
    width_mult: _float(0, 4, "e.g. 1.0 or 1.2", **_POSITIVE) | None = None
    ks_list: KernelSizes | None = None
    expand_ratio_list: ExpandRatios | None = None
    depth_list: Depths | None = None
    width_mult_list: Widths | None = None
    first_stride: _int(1, 4, "2 for ImageNet-sized inputs, 1 for small images") = 2
    stage_strides: Annotated[list[_int(1, 4)], Length(1, 8)] | None = None
    dropout_rate: _float(0, 1, "e.g. 0.1", high_open=True) = 0.1
    bn_momentum: _float(0, 1, "e.g. 0.1") = 0.1
    bn_eps: _float(0, 1, "e.g. 1e-5", **_POSITIVE) | None = None

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
    limit: _int(1, 10**9, "leave it out to use every training image") | None = None
    holdout: _int(0, 10**8, "e.g. 10000") = 10000
    resolutions: Annotated[list[_int(8, 1024, "e.g. [128, 160, 192, 224]")], Length(1, 64)] = field(
        default_factory=lambda: [128, 160, 192, 224]
    )
    crop_scale: Annotated[list[_float(0, 1, "e.g. [0.08, 1.0]", **_POSITIVE)], Length(2, 2)] = field(
        default_factory=lambda: [0.08, 1.0]
    )
    flip: bool = True
    batch_size: _int(1, MAX_BATCH, "e.g. 256") = 256
    eval_batch_size: _int(1, MAX_BATCH, "e.g. 500") = 500
    workers: _int(0, 256, "0 decodes in the main process, e.g. 4") = 4
    # 3 turns grey images into RGB ones (the channel repeated), for supernets made for colour (transfer).
    channels: _int(1, 3, "1 or 3 (leave it out for the dataset's own)") | None = None


@dataclass(frozen=True)
class Phase:
    """One stage of progressive shrinking: which choices are elastic, for how long, how fast."""

    name: str
    epochs: _int(0, MAX_EPOCHS)
    lr: _float(0, 10, "e.g. 0.1 (0.026 per 64 images in the paper)", **_POSITIVE)
    warmup_epochs: _int(0, MAX_EPOCHS) = 0
    warmup_lr: _float(0, 10, "e.g. 0.01", **_POSITIVE) | None = None
    subnets_per_step: _int(1, 16, "e.g. 1, or 2-4 for sandwich phases") = 1
    ks: Annotated[list[int], Chosen] | None = None
    expand: Annotated[list[float], Chosen] | None = None
    depth: Annotated[list[int], Chosen] | None = None
    width: Annotated[list[float], Chosen] | None = None
    sort_channels: _int(0, 5, "an index into net.expand_ratio_list") | None = None
    sandwich: bool = False
    train_largest: bool = False
    distill: bool = True
    inplace_distill: bool = False


@dataclass(frozen=True)
class Recipe:
    """Everything one `ofa train` run needs."""

    phases: list[Phase]
    net: NetConfig = field(default_factory=NetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: _int(0, 2**63 - 1) = 0
    momentum: _float(0, 1, "e.g. 0.9", high_open=True) = 0.9
    nesterov: bool = True
    weight_decay: _float(
        -1, 1, "e.g. 3e-5", warn_below=0, warning="a negative weight decay grows the weights; use >= 0"
    ) = 3e-5
    label_smoothing: _float(0, 1, "e.g. 0.1", high_open=True) = 0.1
    kd_ratio: _float(0, 100, "e.g. 1.0 (0 turns distillation off)") = 1.0
    bn_calibration_images: _int(1, 10**7, "e.g. 2000") = 2000
    bn_calibration_batch: _int(1, MAX_BATCH, "e.g. 200") = 200
    bn_calibration_augment: bool = False
    validate_every: _int(0, MAX_EPOCHS, "epochs between validations; 0 validates at phase ends only") = 0
    checkpoint_every: _int(1, 10**9, "steps between checkpoints, e.g. 200") = 200
    log_every: _int(1, 10**9, "steps between log lines, e.g. 20") = 20
    tensorboard: bool = False
    no_progressive_shrinking: bool = False
    init: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(value: Any, hint: Any, key: str) -> Any:
    """Convert `value` to the annotated type and check its Range/Length, or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *limits = typing.get_args(hint)
        value = _check(value, base, key)
        for limit in limits:
            limit.check(value, key)
        return value
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
        value = float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r} is not a finite number")
    return value


def _build(cls: type, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'the recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
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
    _check_data(recipe.data)
    for i, phase in enumerate(recipe.phases):
        if phase.epochs + phase.warmup_epochs < 1:
            raise ConfigError(
                f"phases[{i}] ({phase.name}): epochs = {phase.epochs} and warmup_epochs = "
                f"{phase.warmup_epochs} train nothing; give the phase at least one epoch or remove it"
            )
        n_expand = len(recipe.net.lists()["expand_ratio_list"])
        if phase.sort_channels is not None and phase.sort_channels >= n_expand:
            raise ConfigError(
                f"phases[{i}].sort_channels = {phase.sort_channels} is out of range: allowed 0 <= "
                f"sort_channels < {n_expand} (an index into net.expand_ratio_list, which has {n_expand} entries)"
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
    _check_strategies(recipe)
    return recipe


def _check_strategies(recipe: Recipe) -> None:
    """The training-strategy keys (issue #23): in-place distillation and starting from a supernet file."""
    if recipe.init is not None and not recipe.init.strip():
        raise ConfigError(
            "init is empty; give the path of a supernet file (e.g. RUN/supernet.pt) or leave it out"
        )
    for i, phase in enumerate(recipe.phases):
        if not phase.inplace_distill:
            continue
        where = f"phases[{i}] ({phase.name}): inplace_distill: true"
        if not phase.sandwich:
            # The soft targets are the largest subnet's outputs of the same step, so it must come first.
            raise ConfigError(
                f"{where} distils every subnet from the largest one trained first in the same step; "
                "add sandwich: true (and subnets_per_step >= 3 for random subnets besides the corners)"
            )
        if phase.distill:
            raise ConfigError(
                f"{where} takes its soft targets from the largest subnet, not from the teacher, but distill "
                "is true (its default); set distill: false"
            )
        if recipe.no_progressive_shrinking:
            raise ConfigError(
                f"{where} cannot be combined with no_progressive_shrinking: true, which merges the phases into "
                "one uniformly sampled phase; drop one of the two"
            )


def _check_data(data: DataConfig) -> None:
    """What the per-field ranges cannot say: crop_scale is (low, high), and odd sizes are suspicious."""
    low, high = data.crop_scale
    if low > high:
        raise ConfigError(
            f"data.crop_scale = {data.crop_scale} is not a range: write [low, high] with low <= high"
        )
    odd = [r for r in data.resolutions if r % 2]
    if odd:
        warnings.warn(
            f"data.resolutions {data.resolutions} has odd sizes {odd}: stride-2 layers round them up, so "
            "feature maps of neighbouring sizes differ unevenly; the official supernets use multiples of 4",
            RecipeWarning,
            stacklevel=3,
        )


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


MAX_RECIPE_BYTES = 1 << 20


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a YAML recipe."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist; see configs/ for examples")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(
            f"{path} is {path.stat().st_size} bytes: not a recipe (a recipe is a few kB of YAML)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        reason = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"{path} is not valid YAML{line}: {reason}") from None
    return recipe_from_dict(data or {})
