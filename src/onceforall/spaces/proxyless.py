"""OFA-ProxylessNAS: the elastic supernet, the static ProxylessNASNets its subnets become, and its space.

Differences from OFA-MobileNetV3: relu6 everywhere, no SE, BN eps 1e-3, the first block has no
shortcut, a sixth stage of one elastic block (depth fixed at 1) and a feature-mix layer with BN
that runs before the global pooling.
"""

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
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    layer_from_config,
)
from onceforall.spaces.common import OfficialNetwork, set_bn_param, to_list
from onceforall.spaces.mbconv import MBConvSupernet, mbconv_stages
from onceforall.spaces.mobilenet_v3 import IMAGENET_RESOLUTIONS, _check_args, _digits

BASE_WIDTHS = (32, 16, 24, 40, 80, 96, 192, 320, 1280)
GOOGLE_WIDTHS = (32, 16, 24, 32, 64, 96, 160, 320, 1280)  # MobileNetV2's, `base_stage_width="google"`
IMAGENET_STRIDES = (2, 2, 2, 1, 2, 1)
ACT = "relu6"
BN_PARAM = (0.1, 1e-3)


class ProxylessNASNets(OfficialNetwork):
    """A static ProxylessNAS network (what `get_active_subnet` returns), built from layers or a net config."""

    def __init__(
        self,
        first_conv: ConvLayer,
        blocks: Sequence[ResidualBlock],
        feature_mix_layer: ConvLayer | None,
        classifier: LinearLayer,
    ):
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        self.feature_mix_layer = feature_mix_layer
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        if self.feature_mix_layer is not None:
            x = self.feature_mix_layer(x)
        return self.classifier(x.mean((2, 3)))

    @property
    def module_str(self) -> str:
        """The official summary: one line per layer, the pooling as the official module prints itself."""
        lines = [self.first_conv.module_str, *(block.module_str for block in self.blocks)]
        if self.feature_mix_layer is not None:  # the official string fails without one
            lines.append(self.feature_mix_layer.module_str)
        return "\n".join([*lines, "MyGlobalAvgPool2d(keep_dim=False)", self.classifier.module_str])

    @property
    def config(self) -> dict[str, Any]:
        bn = self.first_conv.bn
        return {
            "name": "ProxylessNASNets",
            "bn": {"momentum": bn.momentum, "eps": bn.eps, "ws_eps": None},
            "first_conv": self.first_conv.config,
            "blocks": [block.config for block in self.blocks],
            "feature_mix_layer": None if self.feature_mix_layer is None else self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

    @classmethod
    def build_from_config(cls, config: dict[str, Any]) -> ProxylessNASNets:
        net = cls(
            layer_from_config(config["first_conv"]),
            [layer_from_config(block) for block in config["blocks"]],
            layer_from_config(config.get("feature_mix_layer")),
            layer_from_config(config["classifier"]),
        )
        bn = config.get("bn") or {"momentum": BN_PARAM[0], "eps": BN_PARAM[1]}
        set_bn_param(net, bn["momentum"], bn["eps"])
        return net


class OFAProxylessNASNets(MBConvSupernet):
    """The once-for-all ProxylessNAS supernet: elastic kernel size, expand ratio and depth.

    Arguments and methods follow the official `OFAProxylessNASNets`; keyword-only extras adapt the
    stem to other inputs (`in_channels`, `first_stride`, `stage_strides`) and set the resolutions
    of the search space. The last stage has one block whatever the depth list.
    """

    def __init__(
        self,
        n_classes: int = 1000,
        bn_param: tuple[float, float] = BN_PARAM,
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
        if base_stage_width not in (None, "proxyless", "google"):
            raise OFAError(
                f"base_stage_width must be None (ProxylessNAS widths, as released) or 'google' "
                f"(MobileNetV2 widths), got {base_stage_width!r}"
            )
        self.ks_list = sorted(to_list(ks_list))
        self.expand_ratio_list = sorted(to_list(expand_ratio_list))
        self.depth_list = sorted(to_list(depth_list))
        _check_args(n_classes, width_mult, in_channels, self.ks_list, self.expand_ratio_list, self.depth_list)
        if len(stage_strides) != 6:
            raise OFAError(f"stage_strides needs 6 entries (one per stage), got {list(stage_strides)}")
        self.n_classes, self.width_mult, self.dropout_rate = n_classes, width_mult, dropout_rate
        self.in_channels, self.first_stride = in_channels, first_stride
        self.stage_strides = tuple(stage_strides)
        self.resolutions = tuple(sorted(resolutions))
        self.base_widths = GOOGLE_WIDTHS if base_stage_width == "google" else BASE_WIDTHS
        widths = [make_divisible(w * width_mult) for w in self.base_widths]
        self.stage_widths = tuple(widths[2:8])

        self.first_conv = ConvLayer(in_channels, widths[0], 3, first_stride, act_func=ACT)
        first_block = MBConvLayer(widths[0], widths[1], 3, 1, expand_ratio=1, act_func=ACT)
        stages, self.block_group_info = mbconv_stages(
            widths[1],
            self.stage_widths,
            self.stage_strides,
            [self.depth_list[-1]] * 5 + [1],
            self.ks_list,
            self.expand_ratio_list,
            [ACT] * 6,
            [False] * 6,
        )
        self.blocks = nn.ModuleList([ResidualBlock(first_block, None), *stages])
        feature_dim = self.stage_widths[-1]
        self.feature_mix_layer = ConvLayer(feature_dim, widths[8], 1, act_func=ACT)
        self.classifier = LinearLayer(widths[8], n_classes, dropout_rate=dropout_rate)
        set_bn_param(self, *bn_param)
        self.runtime_depth = [len(group) for group in self.block_group_info]
        self.build_args = {
            "n_classes": n_classes,
            "bn_param": list(bn_param),
            "dropout_rate": dropout_rate,
            "base_stage_width": base_stage_width,
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
        x = self.feature_mix_layer(x)
        return self.classifier(x.mean((2, 3)))

    def static_network(self, blocks: list[nn.Module]) -> ProxylessNASNets:
        return ProxylessNASNets(
            copy.deepcopy(self.first_conv),
            blocks,
            copy.deepcopy(self.feature_mix_layer),
            copy.deepcopy(self.classifier),
        )

    def head(self) -> list[nn.Module]:
        return [self.feature_mix_layer, self.classifier]

    def net_config(self, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": "ProxylessNASNets",
            "first_conv": self.first_conv.config,
            "blocks": blocks,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        return proxyless_space(self, resolutions)


def space_name(net: OFAProxylessNASNets) -> str:
    """The official id for the ImageNet layout (`ofa_proxyless_d234_e346_k357_w1.3`), with suffixes otherwise."""
    name = (
        f"ofa_proxyless_d{_digits(net.depth_list)}_e{_digits(net.expand_ratio_list)}"
        f"_k{_digits(net.ks_list)}_w{net.width_mult}"
    )
    if net.base_widths == GOOGLE_WIDTHS:
        name += "_google"
    if net.in_channels != 3:
        name += f"_in{net.in_channels}"
    if (net.first_stride, net.stage_strides) != (2, IMAGENET_STRIDES):
        name += f"_s{net.first_stride}{_digits(net.stage_strides)}"
    return name


def proxyless_space(net: OFAProxylessNASNets, resolutions: Sequence[int]) -> SearchSpace:
    """Genes: [image_size, d x6 (the last fixed at 1), ks x21, e x21]; one site per layer."""
    resolutions = tuple(sorted(resolutions))
    if not resolutions or any(not isinstance(r, int) or r < net.total_stride for r in resolutions):
        raise OFAError(
            f"resolutions must be integers >= the total stride {net.total_stride}, got {resolutions}"
        )
    n_stages = len(net.block_group_info)
    slots_of = [[index - 1 for index in group] for group in net.block_group_info]
    n_blocks = len(net.blocks) - 1
    genes = [Gene("image_size", None, resolutions, "resolution", 0)]
    genes += [Gene("d", s, tuple(net.depth_list), "depth", 1 + s) for s in range(n_stages - 1)]
    genes += [Gene("d", n_stages - 1, (1,), "depth", n_stages)]
    block_group = 1 + n_stages
    genes += [Gene("ks", i, tuple(net.ks_list), "block", block_group + i, i) for i in range(n_blocks)]
    genes += [
        Gene("e", i, tuple(net.expand_ratio_list), "block", block_group + i, i) for i in range(n_blocks)
    ]
    stages = tuple(Stage(1 + s, 0, tuple(slots)) for s, slots in enumerate(slots_of))
    return SearchSpace(space_name(net), tuple(genes), stages, n_blocks, _sites(net, slots_of))


def _sites(net: OFAProxylessNASNets, slots_of: list[list[int]]) -> tuple[Site, ...]:
    """Every layer a subnet can run, as a function of the genes it depends on."""
    c = [net.first_conv.out_channels, net.blocks[0].conv.out_channels, *net.stage_widths]
    fm = net.feature_mix_layer.out_channels
    s0, strides, n_stages = net.first_stride, net.stage_strides, len(slots_of)
    n_blocks = len(net.blocks) - 1
    ks_gene, e_gene = 1 + n_stages, 1 + n_stages + n_blocks

    def size_at(r: int, stage: int) -> int:
        size = out_size(r, s0)
        for s in strides[:stage]:
            size = out_size(size, s)
        return size

    sites = [
        Site((0,), None, lambda r: LayerSpec("conv", r, net.in_channels, c[0], 3, s0, act=ACT)),
        Site((0,), None, lambda r: LayerSpec("mbconv", out_size(r, s0), c[0], c[1], 3, 1, act=ACT)),
    ]
    for stage, slots in enumerate(slots_of):
        for pos, slot in enumerate(slots):
            cin = c[1 + stage] if pos == 0 else c[2 + stage]
            stride = strides[stage] if pos == 0 else 1

            def block(r, k, e, stage=stage, pos=pos, cin=cin, stride=stride):
                in_size = size_at(r, stage) if pos == 0 else size_at(r, stage + 1)
                cout = c[2 + stage]
                mid = make_divisible(round(cin * e))
                shortcut = stride == 1 and cin == cout
                return LayerSpec("mbconv", in_size, cin, cout, k, stride, mid, act=ACT, shortcut=shortcut)

            sites.append(Site((0, ks_gene + slot, e_gene + slot), slot, block))
    sites += [
        Site((0,), None, lambda r: LayerSpec("conv", size_at(r, n_stages), c[-1], fm, 1, act=ACT)),
        Site((0,), None, lambda r: LayerSpec("pool", size_at(r, n_stages), fm, fm)),
        Site((), None, lambda: LayerSpec("linear", 1, fm, net.n_classes, bias=True, use_bn=False)),
    ]
    return tuple(sites)
