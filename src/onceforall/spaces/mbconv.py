"""What OFA-MobileNetV3 and OFA-ProxylessNAS share: stages of elastic MBConv blocks after a static first block."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, GeneTable, SearchSpace, Site
from onceforall.errors import ArchError, OFAError
from onceforall.nn.dynamic import DynamicMBConvLayer
from onceforall.nn.ops import make_divisible, out_size
from onceforall.nn.spec import LayerSpec, spec_of
from onceforall.nn.static import IdentityLayer, ResidualBlock
from onceforall.spaces.common import (
    Supernet,
    check_input,
    check_subnet_keywords,
    layer_config,
    layer_module_str,
    set_bn_param,
    to_list,
)

# The official `set_constraint` types and the `set_active_subnet` keyword each restricts.
CONSTRAINT_TYPES = {"kernel_size": "ks", "expand_ratio": "e", "depth": "d"}


POOL = "pool"  # in a supernet's `head_layers`: where the features are averaged to 1x1


@dataclass(frozen=True)
class MBConvStage:
    """One stage of elastic MBConv blocks: the whole description the modules and the space are built from.

    The first block has the stage's stride, the others stride 1; a block whose input and output
    match has an identity shortcut. A stage shorter than the depth list runs whole (depth fixed).
    """

    width: int
    depth: int
    stride: int
    act: str
    use_se: bool


def mbconv_stages(
    in_channels: int, stages: Sequence[MBConvStage], ks_list: list[int], expand_ratio_list: list[float]
) -> tuple[list[nn.Module], list[list[int]]]:
    """Residual blocks of elastic MBConv layers, stage by stage, and the block indices of each stage.

    Indices start at 1: `blocks[0]` of both families is the static first block.
    """
    blocks: list[nn.Module] = []
    groups: list[list[int]] = []
    channels = in_channels
    for stage in stages:
        groups.append(list(range(1 + len(blocks), 1 + len(blocks) + stage.depth)))
        for i in range(stage.depth):
            s = stage.stride if i == 0 else 1
            layer = DynamicMBConvLayer(
                [channels], [stage.width], ks_list, expand_ratio_list, s, stage.act, stage.use_se
            )
            shortcut = IdentityLayer(channels, channels) if s == 1 and channels == stage.width else None
            blocks.append(ResidualBlock(layer, shortcut))
            channels = stage.width
    return blocks, groups


def mbconv_space(net: MBConvSupernet, name: str, resolutions: tuple[int, ...]) -> SearchSpace:
    """Genes [image_size, d per stage, ks per block, e per block] and one cost site per layer.

    Everything is read off the built modules (so off the one `MBConvStage` description): the stem
    (`first_conv`, `blocks[0]`), the elastic blocks and the `head_layers`.
    """
    genes = GeneTable()
    genes.add("image_size", None, resolutions, "resolution")
    for s, group in enumerate(net.block_group_info):
        depths = net.depth_list if len(group) >= net.depth_list[-1] else [len(group)]
        genes.add("d", s, depths, "depth")
    n_blocks = len(net.blocks) - 1
    for field, choices in (("ks", net.ks_list), ("e", net.expand_ratio_list)):
        for slot in range(n_blocks):
            genes.add(field, slot, choices, "block", slot=slot, mutates_with=("block", slot))
    stages = [genes.stage(("d", s), [i - 1 for i in group]) for s, group in enumerate(net.block_group_info)]

    sites: list[Site] = []
    size_of: Callable[[int], int] | None = _identity  # the input size of the next layer; None once pooled
    channels = slot = 0
    head = [attr if attr == POOL else getattr(net, attr) for attr in net.head_layers]
    for item in [net.first_conv, *net.blocks, *head]:
        if isinstance(item, str):  # POOL
            sites.append(genes.site(["image_size"], partial(_pool_spec, size_of, channels)))
            size_of = None
        elif isinstance(item, ResidualBlock) and isinstance(item.conv, DynamicMBConvLayer):
            reads = ["image_size", ("ks", slot), ("e", slot)]
            sites.append(genes.site(reads, partial(_block_spec, item, size_of), slot=slot))
            size_of, channels = _then(size_of, item.conv.stride), item.conv.out_channel_list[-1]
            slot += 1
        else:
            static = spec_of(item, 1)
            if size_of is None:  # after the pool: 1x1, whatever the resolution
                sites.append(genes.site([], partial(spec_of, item, 1)))
            else:
                sites.append(genes.site(["image_size"], partial(_static_spec, item, size_of)))
                size_of = _then(size_of, static.stride)
            channels = static.out_channels
    return genes.space(name, stages, n_blocks, sites)


def _identity(r: int) -> int:
    return r


def _then(size_of: Callable[[int], int], stride: int) -> Callable[[int], int]:
    """The input size after `size_of` and then a layer of `stride`."""
    return size_of if stride == 1 else lambda r: out_size(size_of(r), stride)


def _static_spec(layer: nn.Module, size_of: Callable[[int], int], r: int) -> LayerSpec:
    return spec_of(layer, size_of(r))


def _pool_spec(size_of: Callable[[int], int], channels: int, r: int) -> LayerSpec:
    return LayerSpec("pool", size_of(r), channels, channels)


def _block_spec(block: ResidualBlock, size_of: Callable[[int], int], r: int, k: int, e: float) -> LayerSpec:
    """An elastic block at kernel size `k` and expand ratio `e`, as `get_active_subnet` extracts it."""
    layer = block.conv
    cin, cout = layer.in_channel_list[-1], layer.out_channel_list[-1]
    mid = make_divisible(round(cin * e))
    shortcut = block.shortcut is not None
    return LayerSpec(
        "mbconv", size_of(r), cin, cout, k, layer.stride, mid, layer.use_se, layer.act_func, shortcut=shortcut
    )


class MBConvSupernet(Supernet):
    """The official control API over `blocks[0]` (static) and `block_group_info` stages of elastic blocks.

    Subclasses build `first_conv`, `blocks`, `block_group_info`, the head, and say how a static
    network and its official config are assembled (`static_network`, `net_config`).
    """

    ks_list: list[int]
    expand_ratio_list: list[float]
    depth_list: list[int]
    first_stride: int
    stage_strides: tuple[int, ...]
    block_group_info: list[list[int]]
    runtime_depth: list[int]
    # set_constraint's allowed values: per dimension ("ks", "e", "d"), one list per block or stage.
    _include: dict[str, list[list[Any]]] | None = None

    def take_args(
        self,
        n_classes: int,
        bn_param: tuple[float, float],
        dropout_rate: float,
        width_mult: float,
        ks_list: int | Sequence[int],
        expand_ratio_list: float | Sequence[float],
        depth_list: int | Sequence[int],
        in_channels: int,
        first_stride: int,
        stage_strides: Sequence[int],
        resolutions: Sequence[int],
        **extra: Any,
    ) -> None:
        """Check and keep the constructor arguments both families share; `build_args` records them all."""
        self.ks_list = sorted(to_list(ks_list))
        self.expand_ratio_list = sorted(to_list(expand_ratio_list))
        self.depth_list = sorted(to_list(depth_list))
        check_args(n_classes, width_mult, in_channels, self.ks_list, self.expand_ratio_list, self.depth_list)
        n_stages = len(self.imagenet_strides)
        if len(stage_strides) != n_stages:
            raise OFAError(
                f"stage_strides needs {n_stages} entries (one per stage), got {list(stage_strides)}"
            )
        self.n_classes, self.width_mult, self.dropout_rate = n_classes, width_mult, dropout_rate
        self.in_channels, self.first_stride = in_channels, first_stride
        self.stage_strides = tuple(stage_strides)
        self.resolutions = tuple(sorted(resolutions))
        self.build_args = {
            "n_classes": n_classes,
            "bn_param": list(bn_param),
            "dropout_rate": dropout_rate,
            **extra,
            "width_mult": width_mult,
            "ks_list": self.ks_list,
            "expand_ratio_list": self.expand_ratio_list,
            "depth_list": self.depth_list,
            "in_channels": in_channels,
            "first_stride": first_stride,
            "stage_strides": list(self.stage_strides),
            "resolutions": list(self.resolutions),
        }

    def finish(self, bn_param: tuple[float, float]) -> None:
        """After the modules are built: the BN settings and every stage at its full depth."""
        set_bn_param(self, *bn_param)
        self.runtime_depth = [len(group) for group in self.block_group_info]

    def static_network(self, blocks: list[nn.Module]) -> nn.Module:
        raise NotImplementedError

    def net_config(self, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    # The attributes after the blocks, in order, with POOL where the features are averaged.
    head_layers: tuple[str, ...]

    # The official id's prefix, and the strides for which the id has no stride suffix.
    id_prefix: str
    imagenet_strides: tuple[int, ...]
    id_variant = ""  # e.g. ProxylessNAS's "_google" widths
    width_mult: float
    in_channels: int

    def space_name(self) -> str:
        """The official id for the ImageNet layout (`ofa_mbv3_d234_e346_k357_w1.0`), with suffixes otherwise."""
        name = (
            f"{self.id_prefix}_d{digits(self.depth_list)}_e{digits(self.expand_ratio_list)}"
            f"_k{digits(self.ks_list)}_w{self.width_mult}{self.id_variant}"
        )
        if self.in_channels != 3:
            name += f"_in{self.in_channels}"
        if (self.first_stride, self.stage_strides) != (2, self.imagenet_strides):
            name += f"_s{self.first_stride}{digits(self.stage_strides)}"
        return name

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        return mbconv_space(self, self.space_name(), resolutions)

    def head(self) -> list[nn.Module]:
        """The layers after the blocks, in order (for `module_str`)."""
        return [getattr(self, attr) for attr in self.head_layers if attr != POOL]

    @property
    def total_stride(self) -> int:
        stride = self.first_stride
        for s in self.stage_strides:
            stride *= s
        return stride

    @property
    def dynamic_blocks(self) -> list[DynamicMBConvLayer]:
        return [block.conv for block in self.blocks[1:]]

    @property
    def bn_param(self) -> tuple[float, float]:
        bn = self.first_conv.bn
        return bn.momentum, bn.eps

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """First conv, the static first block and the active elastic blocks (the head is the subclass's)."""
        check_input(x, self.in_channels, self.total_stride)
        x = self.blocks[0](self.first_conv(x))
        for index in self.active_blocks():
            x = self.blocks[index](x)
        return x

    def depth_choices(self, stage: int) -> list[int]:
        """Depths accepted for a stage; a stage shorter than the depth list also runs whole."""
        length = len(self.block_group_info[stage])
        return self.depth_list if length >= self.depth_list[-1] else sorted({*self.depth_list, length})

    # ------------------------------------------------------------------ official control API
    def set_max_net(self) -> None:
        self.set_active_subnet(ks=self.ks_list[-1], e=self.expand_ratio_list[-1], d=self.depth_list[-1])

    def set_active_subnet(self, ks: Any = None, e: Any = None, d: Any = None, **kwargs: Any) -> None:
        """Scalars apply to every block (stage for `d`); lists give one value per block (stage).

        `None` leaves a value as it is; depths are clipped to the stage length. Any other keyword
        is an ArchError (the official method ignores them), except the old API's `wid=None`.
        """
        check_subnet_keywords(self, kwargs, ("ks", "e", "d"))
        n_blocks, n_stages = len(self.blocks) - 1, len(self.block_group_info)
        ks, e, d = to_list(ks, n_blocks, "ks"), to_list(e, n_blocks, "e"), to_list(d, n_stages, "d")
        checks = [("ks", v, self.ks_list) for v in ks] + [("e", v, self.expand_ratio_list) for v in e]
        checks += [("d", v, self.depth_choices(stage)) for stage, v in enumerate(d)]
        for name, value, choices in checks:
            if value is not None and value not in choices:
                raise ArchError(f"{name} = {value!r} is not allowed; choices are {tuple(choices)}")
        for layer, k, ratio in zip(self.dynamic_blocks, ks, e):
            if k is not None:
                layer.active_kernel_size = k
            if ratio is not None:
                layer.active_expand_ratio = ratio
        for stage, depth in enumerate(d):
            if depth is not None:
                self.runtime_depth[stage] = min(len(self.block_group_info[stage]), depth)

    def set_constraint(self, include_list: Sequence[Any], constraint_type: str = "depth") -> None:
        """Restrict `sample_active_subnet` to some values of one dimension, as the official method.

        `constraint_type` is "kernel_size", "expand_ratio" or "depth"; `include_list` holds the
        allowed values for every block (stage), or one list of them per block (per stage). The
        values must be choices of the supernet. Activation and the search space are unaffected.
        """
        if constraint_type not in CONSTRAINT_TYPES:
            raise ArchError(
                f"constraint_type = {constraint_type!r} is not known; choices are {tuple(CONSTRAINT_TYPES)}"
            )
        name = CONSTRAINT_TYPES[constraint_type]
        if (
            isinstance(include_list, (str, bytes))
            or not isinstance(include_list, Sequence)
            or not include_list
        ):
            raise ArchError(
                f"include_list for {constraint_type} must be a non-empty list of values (or of lists, one "
                f"per {'stage' if name == 'd' else 'block'}), got {include_list!r}"
            )
        unit = "stage" if name == "d" else "block"
        n = len(self.block_group_info) if name == "d" else len(self.blocks) - 1
        # As the official method: a list whose first entry is a list gives one value set per position.
        per_position = isinstance(include_list[0], (list, tuple))
        if per_position and not all(isinstance(v, (list, tuple)) for v in include_list):
            raise ArchError(
                f"include_list for {constraint_type} mixes lists and values: give one list of values, "
                f"or one list per {unit}"
            )
        sets = [list(v) for v in include_list] if per_position else [list(include_list)] * n
        if len(sets) != n:
            raise ArchError(
                f"include_list for {constraint_type} has {len(sets)} lists; expected one per {unit} ({n})"
            )
        for position, values in enumerate(sets):
            choices = tuple(self._choices(name, position))
            bad = [v for v in values if v not in choices]
            if not values:
                raise ArchError(f"include_list for {constraint_type} allows nothing at {unit} {position}")
            if bad:
                raise ArchError(
                    f"include_list for {constraint_type} allows {bad}, which are not choices of this "
                    f"supernet at {unit} {position}; choices are {choices}"
                )
        self._include = {**(self._include or {}), name: sets}

    def clear_constraint(self) -> None:
        """Lift every `set_constraint`: sampling draws from all choices again."""
        self._include = None

    def _choices(self, name: str, position: int) -> list:
        if name == "ks":
            return self.ks_list
        return self.expand_ratio_list if name == "e" else self.depth_choices(position)

    def sample_active_subnet(self) -> dict[str, list]:
        """Draw a subnet uniformly per entry with Python's `random`, activate and return it.

        Draws come in the official order (all kernel sizes, all expand ratios, then depths), from
        the values `set_constraint` allows, so a seeded `random` gives the official subnet.
        """
        n_blocks, n_stages = len(self.blocks) - 1, len(self.block_group_info)
        include = self._include or {}
        ks_sets = include.get("ks", [self.ks_list] * n_blocks)
        e_sets = include.get("e", [self.expand_ratio_list] * n_blocks)
        d_sets = include.get("d", [self.depth_list] * n_stages)
        config = {
            "ks": [random.choice(values) for values in ks_sets],
            "e": [random.choice(values) for values in e_sets],
            "d": [
                min(len(group), random.choice(values)) for group, values in zip(self.block_group_info, d_sets)
            ],
        }
        self.set_active_subnet(**config)
        return config

    def active_arch(self, image_size: int | None = None) -> Arch:
        """The active subnet as an `Arch` at `image_size` (default: the largest resolution)."""
        arch = Arch(
            space=self.search_space().name,
            image_size=self.resolutions[-1] if image_size is None else image_size,
            ks=tuple(layer.active_kernel_size for layer in self.dynamic_blocks),
            e=tuple(layer.active_expand_ratio for layer in self.dynamic_blocks),
            d=tuple(self.runtime_depth),
        )
        return self.search_space().validate(arch)

    def active_blocks(self) -> list[int]:
        return [i for group, depth in zip(self.block_group_info, self.runtime_depth) for i in group[:depth]]

    def _active_blocks(self, build) -> list:
        """`build(block, in_channels)` for every active elastic block, in order."""
        out, channels = [], self.blocks[0].conv.out_channels
        for index in self.active_blocks():
            out.append(build(self.blocks[index], channels))
            channels = self.blocks[index].conv.active_out_channel
        return out

    @torch.no_grad()
    def get_active_subnet(self, preserve_weight: bool = True) -> nn.Module:
        """The active subnet as a static network (weights copied, kernel transforms applied)."""
        blocks = [copy.deepcopy(self.blocks[0])]
        blocks += self._active_blocks(
            lambda block, cin: ResidualBlock(
                block.conv.get_active_subnet(cin, preserve_weight), copy.deepcopy(block.shortcut)
            )
        )
        subnet = self.static_network(blocks)
        set_bn_param(subnet, *self.bn_param)
        return subnet.to(next(self.parameters()).device).train(self.training)

    def get_active_net_config(self) -> dict[str, Any]:
        """The official `net.config` JSON of the active subnet."""
        blocks = [self.blocks[0].config]
        blocks += self._active_blocks(
            lambda block, cin: {
                "name": "ResidualBlock",
                "conv": block.conv.get_active_subnet_config(cin),
                "shortcut": None if block.shortcut is None else block.shortcut.config,
            }
        )
        momentum, eps = self.bn_param
        config = self.net_config(blocks)
        return {
            "name": config.pop("name"),
            "bn": {"momentum": momentum, "eps": eps, "ws_eps": None},
            **config,
        }

    @property
    def module_str(self) -> str:
        """The official summary of the active subnet: one line per active layer."""
        layers = [
            self.first_conv,
            self.blocks[0],
            *(self.blocks[i] for i in self.active_blocks()),
            *self.head(),
        ]
        return "".join(layer_module_str(layer) + "\n" for layer in layers)

    @property
    def config(self) -> dict[str, Any]:
        """The official config of the whole supernet (every block at its elastic ranges), JSON-serialisable."""
        config = self.net_config([layer_config(block) for block in self.blocks])
        return {
            "name": type(self).__name__,
            "bn": self.get_bn_param(),
            **{k: v for k, v in config.items() if k != "name"},
        }

    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort every block's middle channels by importance (start of each elastic-width phase)."""
        for layer in self.dynamic_blocks:
            layer.re_organize_middle_weights(expand_ratio_stage)


def check_args(
    n_classes: int, width_mult: float, in_channels: int, ks: list[int], es: list[float], ds: list[int]
) -> None:
    """The constructor arguments both MBConv families share."""
    if not isinstance(n_classes, int) or n_classes <= 0:
        raise OFAError(f"n_classes must be a positive integer, got {n_classes!r}")
    if not width_mult > 0:
        raise OFAError(f"width_mult must be positive, got {width_mult!r}")
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise OFAError(f"in_channels must be a positive integer, got {in_channels!r}")
    if any(k % 2 == 0 or k < 1 for k in ks):
        raise OFAError(f"kernel sizes must be odd and positive, got {ks}")
    if any(e <= 0 for e in es):
        raise OFAError(f"expand ratios must be positive, got {es}")
    if any(not d >= 1 for d in ds):
        raise OFAError(f"depths must be at least 1, got {ds}")


def digits(values: Sequence[float]) -> str:
    """[3, 4, 6] -> "346", as the official ids write choice lists."""
    return "".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)
