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

from onceforall.errors import OFAError
from onceforall.nn.ops import make_divisible
from onceforall.nn.static import (
    ConvLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    layer_from_config,
)
from onceforall.spaces.common import OfficialNetwork, set_bn_param
from onceforall.spaces.mbconv import POOL, MBConvStage, MBConvSupernet, mbconv_stages
from onceforall.spaces.mobilenet_v3 import IMAGENET_RESOLUTIONS

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

    id_prefix, imagenet_strides = "ofa_proxyless", IMAGENET_STRIDES
    head_layers = ("feature_mix_layer", POOL, "classifier")

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
        self.take_args(
            n_classes,
            bn_param,
            dropout_rate,
            width_mult,
            ks_list,
            expand_ratio_list,
            depth_list,
            in_channels,
            first_stride,
            stage_strides,
            resolutions,
            base_stage_width=base_stage_width,
        )
        self.base_widths = GOOGLE_WIDTHS if base_stage_width == "google" else BASE_WIDTHS
        widths = [make_divisible(w * width_mult) for w in self.base_widths]
        self.stage_widths = tuple(widths[2:8])

        self.first_conv = ConvLayer(in_channels, widths[0], 3, first_stride, act_func=ACT)
        first_block = MBConvLayer(widths[0], widths[1], 3, 1, expand_ratio=1, act_func=ACT)
        # Five stages of the depth list's length, then one of a single block.
        depths = [self.depth_list[-1]] * 5 + [1]
        stages = zip(self.stage_widths, depths, self.stage_strides)
        description = [MBConvStage(w, d, s, ACT, False) for w, d, s in stages]
        blocks, self.block_group_info = mbconv_stages(
            widths[1], description, self.ks_list, self.expand_ratio_list
        )
        self.blocks = nn.ModuleList([ResidualBlock(first_block, None), *blocks])
        feature_dim = self.stage_widths[-1]
        self.feature_mix_layer = ConvLayer(feature_dim, widths[8], 1, act_func=ACT)
        self.classifier = LinearLayer(widths[8], n_classes, dropout_rate=dropout_rate)
        self.finish(bn_param)

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

    @property
    def id_variant(self) -> str:
        return "_google" if self.base_widths == GOOGLE_WIDTHS else ""

    def net_config(self, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": "ProxylessNASNets",
            "first_conv": self.first_conv.config,
            "blocks": blocks,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }
