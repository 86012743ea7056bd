"""OFA-MobileNetV3: the elastic supernet, the static MobileNetV3 its subnets become, and its space."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Gene, SearchSpace, Site, Stage
from onceforall.errors import OFAError
from onceforall.nn.ops import make_divisible, out_size
from onceforall.nn.spec import LayerSpec
from onceforall.nn.static import (
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    layer_from_config,
)
from onceforall.spaces.common import OfficialNetwork, set_bn_param, to_list
from onceforall.spaces.mbconv import MBConvSupernet, mbconv_stages

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
IMAGENET_STRIDES = (2, 2, 2, 1, 2)
# Small images (28-64 px): stem at stride 1 and two stride-1 stages at the end: total stride 8.
SMALL_INPUT_FIRST_STRIDE = 1
SMALL_INPUT_STRIDES = (2, 2, 2, 1, 1)
IMAGENET_RESOLUTIONS = tuple(range(128, 225, 4))


class MobileNetV3(OfficialNetwork):
    """A static MobileNetV3 (what `get_active_subnet` returns), built from layers or a net config."""

    def __init__(
        self,
        first_conv: ConvLayer,
        blocks: Sequence[ResidualBlock],
        final_expand_layer: ConvLayer,
        feature_mix_layer: ConvLayer,
        classifier: LinearLayer,
    ):
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = final_expand_layer
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))

    @property
    def module_str(self) -> str:
        """The official summary: one line per layer, the pooling as the official module prints itself."""
        lines = [self.first_conv.module_str, *(block.module_str for block in self.blocks)]
        lines += [self.final_expand_layer.module_str, "MyGlobalAvgPool2d(keep_dim=True)"]
        return "\n".join([*lines, self.feature_mix_layer.module_str, self.classifier.module_str])

    @property
    def config(self) -> dict[str, Any]:
        bn = self.first_conv.bn
        return {
            "name": "MobileNetV3",
            "bn": {"momentum": bn.momentum, "eps": bn.eps, "ws_eps": None},
            "first_conv": self.first_conv.config,
            "blocks": [block.config for block in self.blocks],
            "final_expand_layer": self.final_expand_layer.config,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> MobileNetV3:
        net = cls(
            layer_from_config(config["first_conv"]),
            [layer_from_config(block) for block in config["blocks"]],
            layer_from_config(config["final_expand_layer"]),
            layer_from_config(config["feature_mix_layer"]),
            layer_from_config(config["classifier"]),
        )
        bn = config.get("bn") or {"momentum": 0.1, "eps": 1e-5}
        set_bn_param(net, bn["momentum"], bn["eps"])
        return net


class OFAMobileNetV3(MBConvSupernet):
    """The once-for-all MobileNetV3 supernet: elastic kernel size, expand ratio and depth.

    Arguments and methods follow the official `OFAMobileNetV3`; keyword-only extras adapt the
    stem to small images (`in_channels`, `first_stride`, `stage_strides`) and set the
    resolutions of the search space.
    """

    def __init__(
        self,
        n_classes: int = 1000,
        bn_param: tuple[float, float] = (0.1, 1e-5),
        dropout_rate: float = 0.1,
        base_stage_width: Any = None,
        width_mult: float = 1.0,
        ks_list: int | Sequence[int] = 3,
        expand_ratio_list: float | Sequence[float] = 6,
        depth_list: int | Sequence[int] = 4,
        *,
        in_channels: int = 3,
        first_stride: int = 2,
        stage_strides: Sequence[int] = IMAGENET_STRIDES,
        resolutions: Sequence[int] = IMAGENET_RESOLUTIONS,
    ):
        super().__init__()
        self.ks_list = sorted(to_list(ks_list))
        self.expand_ratio_list = sorted(to_list(expand_ratio_list))
        self.depth_list = sorted(to_list(depth_list))
        _check_args(n_classes, width_mult, in_channels, self.ks_list, self.expand_ratio_list, self.depth_list)
        if len(stage_strides) != 5:
            raise OFAError(f"stage_strides needs 5 entries (one per stage), got {list(stage_strides)}")
        self.n_classes, self.width_mult, self.dropout_rate = n_classes, width_mult, dropout_rate
        self.in_channels, self.first_stride = in_channels, first_stride
        self.stage_strides = tuple(stage_strides)
        self.resolutions = tuple(sorted(resolutions))
        widths = [make_divisible(w * width_mult) for w in BASE_WIDTHS]
        self.stage_widths = tuple(widths[2:7])

        self.first_conv = ConvLayer(in_channels, widths[0], 3, first_stride, act_func="h_swish")
        first_block = MBConvLayer(widths[0], widths[1], 3, 1, expand_ratio=1, act_func="relu")
        shortcut = IdentityLayer(widths[0], widths[0]) if widths[0] == widths[1] else None
        max_depth = self.depth_list[-1]
        stages, self.block_group_info = mbconv_stages(
            widths[1],
            self.stage_widths,
            self.stage_strides,
            [max_depth] * 5,
            self.ks_list,
            self.expand_ratio_list,
            STAGE_ACTS,
            STAGE_SE,
        )
        self.blocks = nn.ModuleList([ResidualBlock(first_block, shortcut), *stages])
        feature_dim = self.stage_widths[-1]
        self.final_expand_layer = ConvLayer(feature_dim, widths[7], 1, act_func="h_swish")
        self.feature_mix_layer = ConvLayer(
            widths[7], widths[8], 1, bias=False, use_bn=False, act_func="h_swish"
        )
        self.classifier = LinearLayer(widths[8], n_classes, dropout_rate=dropout_rate)
        set_bn_param(self, *bn_param)
        self.runtime_depth = [len(group) for group in self.block_group_info]
        self.build_args = {
            "n_classes": n_classes,
            "bn_param": list(bn_param),
            "dropout_rate": dropout_rate,
            "width_mult": width_mult,
            "ks_list": self.ks_list,
            "expand_ratio_list": self.expand_ratio_list,
            "depth_list": self.depth_list,
            "in_channels": in_channels,
            "first_stride": first_stride,
            "stage_strides": list(self.stage_strides),
            "resolutions": list(self.resolutions),
        }

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        x = self.final_expand_layer(x)
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True))
        return self.classifier(x.flatten(1))

    def static_network(self, blocks: list[nn.Module]) -> MobileNetV3:
        return MobileNetV3(
            copy.deepcopy(self.first_conv),
            blocks,
            copy.deepcopy(self.final_expand_layer),
            copy.deepcopy(self.feature_mix_layer),
            copy.deepcopy(self.classifier),
        )

    def head(self) -> list[nn.Module]:
        return [self.final_expand_layer, self.feature_mix_layer, self.classifier]

    def net_config(self, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": "MobileNetV3",
            "first_conv": self.first_conv.config,
            "blocks": blocks,
            "final_expand_layer": self.final_expand_layer.config,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        return mobilenet_v3_space(self, resolutions)


def _check_args(n_classes: int, width_mult: float, in_channels: int, ks, es, ds) -> None:
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


def _digits(values: Sequence[float]) -> str:
    return "".join(str(int(v)) if float(v).is_integer() else str(v) for v in values)


def space_name(net: OFAMobileNetV3) -> str:
    """The official id for the ImageNet layout (`ofa_mbv3_d234_e346_k357_w1.0`), with suffixes otherwise."""
    name = (
        f"ofa_mbv3_d{_digits(net.depth_list)}_e{_digits(net.expand_ratio_list)}"
        f"_k{_digits(net.ks_list)}_w{net.width_mult}"
    )
    if net.in_channels != 3:
        name += f"_in{net.in_channels}"
    if (net.first_stride, net.stage_strides) != (2, IMAGENET_STRIDES):
        name += f"_s{net.first_stride}{_digits(net.stage_strides)}"
    return name


def mobilenet_v3_space(net: OFAMobileNetV3, resolutions: Sequence[int]) -> SearchSpace:
    """Genes: [image_size, d x5, ks x20, e x20]; one site per layer for the efficiency models."""
    resolutions = tuple(sorted(resolutions))
    if not resolutions or any(not isinstance(r, int) or r < net.total_stride for r in resolutions):
        raise OFAError(
            f"resolutions must be integers >= the total stride {net.total_stride}, got {resolutions}"
        )
    n_stages, max_depth = len(net.block_group_info), net.depth_list[-1]
    n_blocks = n_stages * max_depth
    genes = [Gene("image_size", None, resolutions, "resolution", 0)]
    genes += [Gene("d", s, tuple(net.depth_list), "depth", 1 + s) for s in range(n_stages)]
    block_group = 1 + n_stages
    genes += [Gene("ks", i, tuple(net.ks_list), "block", block_group + i, i) for i in range(n_blocks)]
    genes += [
        Gene("e", i, tuple(net.expand_ratio_list), "block", block_group + i, i) for i in range(n_blocks)
    ]
    stages = tuple(Stage(1 + s, 0, tuple(range(s * max_depth, (s + 1) * max_depth))) for s in range(n_stages))
    return SearchSpace(space_name(net), tuple(genes), stages, n_blocks, _sites(net, n_stages, max_depth))


def _sites(net: OFAMobileNetV3, n_stages: int, max_depth: int) -> tuple[Site, ...]:
    """Every layer a subnet can run, as a function of the genes it depends on."""
    c = [net.first_conv.out_channels, net.blocks[0].conv.out_channels, *net.stage_widths]
    fe, fm = net.final_expand_layer.out_channels, net.feature_mix_layer.out_channels
    s0 = net.first_stride
    strides = net.stage_strides

    def size_at(r: int, stage: int) -> int:
        size = out_size(r, s0)
        for s in strides[:stage]:
            size = out_size(size, s)
        return size

    sites = [
        Site((0,), None, lambda r: LayerSpec("conv", r, net.in_channels, c[0], 3, s0, act="h_swish")),
        Site(
            (0,),
            None,
            lambda r: LayerSpec(
                "mbconv", out_size(r, s0), c[0], c[1], 3, 1, act="relu", shortcut=c[0] == c[1]
            ),
        ),
    ]
    for stage in range(n_stages):
        for pos in range(max_depth):
            slot = stage * max_depth + pos
            cin = c[1 + stage] if pos == 0 else c[2 + stage]
            stride = strides[stage] if pos == 0 else 1

            def block(r, k, e, stage=stage, pos=pos, cin=cin, stride=stride):
                in_size = size_at(r, stage) if pos == 0 else size_at(r, stage + 1)
                mid = make_divisible(round(cin * e))
                return LayerSpec(
                    "mbconv",
                    in_size,
                    cin,
                    c[2 + stage],
                    k,
                    stride,
                    mid,
                    STAGE_SE[stage],
                    STAGE_ACTS[stage],
                    shortcut=stride == 1 and cin == c[2 + stage],
                )

            sites.append(
                Site((0, 1 + n_stages + slot, 1 + n_stages + n_stages * max_depth + slot), slot, block)
            )
    sites += [
        Site((0,), None, lambda r: LayerSpec("conv", size_at(r, n_stages), c[-1], fe, 1, act="h_swish")),
        Site((0,), None, lambda r: LayerSpec("pool", size_at(r, n_stages), fe, fe)),
        Site((), None, lambda: LayerSpec("conv", 1, fe, fm, 1, act="h_swish", use_bn=False)),
        Site((), None, lambda: LayerSpec("linear", 1, fm, net.n_classes, bias=True, use_bn=False)),
    ]
    return tuple(sites)
