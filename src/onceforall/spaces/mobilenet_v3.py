"""OFA-MobileNetV3: the elastic supernet, the static MobileNetV3 its subnets become, and its space."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from onceforall.nn.ops import make_divisible
from onceforall.nn.static import (
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    layer_from_config,
)
from onceforall.spaces.common import OfficialNetwork, set_bn_param
from onceforall.spaces.mbconv import POOL, MBConvStage, MBConvSupernet, mbconv_stages

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

    id_prefix, imagenet_strides = "ofa_mbv3", IMAGENET_STRIDES
    head_layers = ("final_expand_layer", POOL, "feature_mix_layer", "classifier")

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
        )
        widths = [make_divisible(w * width_mult) for w in BASE_WIDTHS]
        self.stage_widths = tuple(widths[2:7])

        self.first_conv = ConvLayer(in_channels, widths[0], 3, first_stride, act_func="h_swish")
        first_block = MBConvLayer(widths[0], widths[1], 3, 1, expand_ratio=1, act_func="relu")
        shortcut = IdentityLayer(widths[0], widths[0]) if widths[0] == widths[1] else None
        stages = zip(self.stage_widths, self.stage_strides, STAGE_ACTS, STAGE_SE)
        description = [MBConvStage(w, self.depth_list[-1], s, act, se) for w, s, act, se in stages]
        blocks, self.block_group_info = mbconv_stages(
            widths[1], description, self.ks_list, self.expand_ratio_list
        )
        self.blocks = nn.ModuleList([ResidualBlock(first_block, shortcut), *blocks])
        feature_dim = self.stage_widths[-1]
        self.final_expand_layer = ConvLayer(feature_dim, widths[7], 1, act_func="h_swish")
        self.feature_mix_layer = ConvLayer(
            widths[7], widths[8], 1, bias=False, use_bn=False, act_func="h_swish"
        )
        self.classifier = LinearLayer(widths[8], n_classes, dropout_rate=dropout_rate)
        self.finish(bn_param)

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

    def net_config(self, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": "MobileNetV3",
            "first_conv": self.first_conv.config,
            "blocks": blocks,
            "final_expand_layer": self.final_expand_layer.config,
            "feature_mix_layer": self.feature_mix_layer.config,
            "classifier": self.classifier.config,
        }
