"""Static layers that extracted subnets are made of, with the official JSON configs.

Module and attribute names follow the official package, so state dicts and `net.config`
files are interchangeable with it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn as nn

from onceforall.nn.ops import Conv2d, build_activation, make_divisible, same_padding

DEFAULT_OPS_ORDER = "weight_bn_act"


class SEModule(nn.Module):
    """Squeeze-and-excitation: mean pool, 1x1 reduce, relu, 1x1 expand, h_sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        self.reduction = reduction
        hidden = make_divisible(channels // reduction)
        self.fc = nn.Sequential(
            OrderedDict(
                reduce=Conv2d(channels, hidden, 1, bias=True),
                relu=nn.ReLU(inplace=True),
                expand=Conv2d(hidden, channels, 1, bias=True),
                h_sigmoid=nn.Hardsigmoid(inplace=True),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True))


class ConvLayer(nn.Module):
    """Conv -> BN -> activation (optional dropout before the conv)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        has_shuffle: bool = False,
        use_se: bool = False,
        use_bn: bool = True,
        act_func: str | None = "relu",
        dropout_rate: float = 0.0,
        ops_order: str = DEFAULT_OPS_ORDER,
    ):
        super().__init__()
        if has_shuffle or use_se or ops_order != DEFAULT_OPS_ORDER:
            raise ValueError(
                "ConvLayer supports only has_shuffle=False, use_se=False, ops_order='weight_bn_act'"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = kernel_size, stride, dilation, groups
        self.bias, self.use_bn, self.act_func, self.dropout_rate = bias, use_bn, act_func, dropout_rate
        if dropout_rate > 0:
            self.dropout = nn.Dropout(dropout_rate, inplace=True)
        padding = same_padding(kernel_size) * dilation
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if use_bn:
            self.bn = nn.BatchNorm2d(out_channels)
        act = build_activation(act_func)
        if act is not None:
            self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    @property
    def module_str(self) -> str:
        """The official one-line summary, e.g. `3x3_Conv_O16_H_SWISH_BN`."""
        k = self.kernel_size
        kind = "GroupConv" if self.groups > 1 else "Conv"
        text = f"{k}x{k}_{'Dilated' if self.dilation > 1 else ''}{kind}_O{self.out_channels}"
        # The official string calls `act_func.upper()` and fails without an activation; leave it out.
        if self.act_func is not None:
            text += f"_{self.act_func.upper()}"
        return text + ("_BN" if self.use_bn else "")

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "ConvLayer",
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "dilation": self.dilation,
            "groups": self.groups,
            "bias": self.bias,
            "has_shuffle": False,
            "use_se": False,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
            "dropout_rate": self.dropout_rate,
            "ops_order": DEFAULT_OPS_ORDER,
        }


class IdentityLayer(nn.Module):
    """The identity shortcut of a residual block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        use_bn: bool = False,
        act_func: str | None = None,
        dropout_rate: float = 0.0,
        ops_order: str = DEFAULT_OPS_ORDER,
    ):
        super().__init__()
        if use_bn or act_func is not None or dropout_rate > 0:
            raise ValueError("IdentityLayer supports only use_bn=False, act_func=None, dropout_rate=0")
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def module_str(self) -> str:
        return "Identity"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "IdentityLayer",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "use_bn": False,
            "act_func": None,
            "dropout_rate": 0,
            "ops_order": DEFAULT_OPS_ORDER,
        }


class LinearLayer(nn.Module):
    """Optional dropout, then a linear classifier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        use_bn: bool = False,
        act_func: str | None = None,
        dropout_rate: float = 0.0,
        ops_order: str = DEFAULT_OPS_ORDER,
    ):
        super().__init__()
        if use_bn or act_func is not None:
            raise ValueError("LinearLayer supports only use_bn=False, act_func=None")
        self.in_features, self.out_features = in_features, out_features
        self.bias, self.dropout_rate = bias, dropout_rate
        if dropout_rate > 0:
            self.dropout = nn.Dropout(dropout_rate, inplace=True)
        self.linear = nn.Linear(in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    @property
    def module_str(self) -> str:
        return f"{self.in_features}x{self.out_features}_Linear"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "LinearLayer",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "use_bn": False,
            "act_func": None,
            "dropout_rate": self.dropout_rate,
            "ops_order": DEFAULT_OPS_ORDER,
        }


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, act: str | None) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel, stride, same_padding(kernel), groups=groups, bias=False),
        bn=nn.BatchNorm2d(cout),
    )
    if act is not None:
        layers["act"] = build_activation(act)
    return nn.Sequential(layers)


class MBConvLayer(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (+SE) -> 1x1 project (no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6,
        mid_channels: int | None = None,
        act_func: str = "relu6",
        use_se: bool = False,
        groups: int | None = None,
    ):
        super().__init__()
        if groups is not None:
            raise ValueError("MBConvLayer supports only groups=None (plain depthwise)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.expand_ratio = kernel_size, stride, expand_ratio
        self.mid_channels, self.act_func, self.use_se = mid_channels, act_func, use_se
        mid = round(in_channels * expand_ratio) if mid_channels is None else mid_channels
        self.inverted_bottleneck = (
            None if expand_ratio == 1 else _conv_bn(in_channels, mid, 1, 1, 1, act_func)
        )
        self.depth_conv = _conv_bn(mid, mid, kernel_size, stride, mid, act_func)
        if use_se:
            self.depth_conv.add_module("se", SEModule(mid))
        self.point_linear = _conv_bn(mid, out_channels, 1, 1, 1, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))

    @property
    def module_str(self) -> str:
        """The official one-line summary, e.g. `SE_5x5_MBConv4_RELU_O40_BN`."""
        # As the official string: the ratio printed is mid // in when the middle width is given,
        # truncated to an integer either way.
        ratio = self.expand_ratio if self.mid_channels is None else self.mid_channels // self.in_channels
        k = self.kernel_size
        text = f"{k}x{k}_MBConv{int(ratio)}_{self.act_func.upper()}"
        return ("SE_" if self.use_se else "") + f"{text}_O{self.out_channels}_BN"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "MBConvLayer",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.expand_ratio,
            "mid_channels": self.mid_channels,
            "act_func": self.act_func,
            "use_se": self.use_se,
            "groups": None,
        }


class ResidualBlock(nn.Module):
    """`conv(x) + shortcut(x)`, or `conv(x)` when there is no shortcut."""

    def __init__(self, conv: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.conv = conv
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.conv(x)
        return self.conv(x) + self.shortcut(x)

    @property
    def module_str(self) -> str:
        conv = "None" if self.conv is None else self.conv.module_str
        shortcut = "None" if self.shortcut is None else self.shortcut.module_str
        return f"({conv}, {shortcut})"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "ResidualBlock",
            "conv": self.conv.config,
            "shortcut": None if self.shortcut is None else self.shortcut.config,
        }


class ResNetBottleneckBlock(nn.Module):
    """ResNet bottleneck: 1x1 -> kxk (stride here) -> 1x1, plus an identity or projected skip, then act.

    The projection is `avgpool_conv` (ResNet-D: average pool, then a stride-1 1x1 conv) or `conv`
    (a strided 1x1 conv); the middle width is `make_divisible(mid_channels or round(out * expand))`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 0.25,
        mid_channels: int | None = None,
        act_func: str = "relu",
        groups: int = 1,
        downsample_mode: str = "avgpool_conv",
    ):
        super().__init__()
        if downsample_mode not in ("avgpool_conv", "conv"):
            raise ValueError(f"downsample_mode must be 'avgpool_conv' or 'conv', got {downsample_mode!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.expand_ratio = kernel_size, stride, expand_ratio
        self.act_func, self.groups, self.downsample_mode = act_func, groups, downsample_mode
        mid = round(out_channels * expand_ratio) if mid_channels is None else mid_channels
        self.mid_channels = mid = make_divisible(mid)
        self.conv1 = _conv_bn(in_channels, mid, 1, 1, 1, act_func)
        self.conv2 = _conv_bn(mid, mid, kernel_size, stride, groups, act_func)
        self.conv3 = _conv_bn(mid, out_channels, 1, 1, 1, None)
        self.downsample = _downsample(in_channels, out_channels, stride, downsample_mode)
        self.final_act = build_activation(act_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.downsample(x)
        return self.final_act(self.conv3(self.conv2(self.conv1(x))) + residual)

    @property
    def module_str(self) -> str:
        k = self.kernel_size
        layers = f"{self.in_channels}->{self.mid_channels}->{self.out_channels}_S{self.stride}_G{self.groups}"
        skip = "Identity" if isinstance(self.downsample, IdentityLayer) else self.downsample_mode
        return f"({k}x{k}_BottleneckConv_{layers}, {skip})"

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "ResNetBottleneckBlock",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.expand_ratio,
            "mid_channels": self.mid_channels,
            "act_func": self.act_func,
            "groups": self.groups,
            "downsample_mode": self.downsample_mode,
        }


def _downsample(cin: int, cout: int, stride: int, mode: str) -> nn.Module:
    """The skip path of a bottleneck: identity, or a (pooled) 1x1 projection with BN."""
    if stride == 1 and cin == cout:
        return IdentityLayer(cin, cout)
    if mode == "conv":
        return nn.Sequential(
            OrderedDict(conv=nn.Conv2d(cin, cout, 1, stride, bias=False), bn=nn.BatchNorm2d(cout))
        )
    return nn.Sequential(
        OrderedDict(
            avg_pool=nn.AvgPool2d(stride, stride, 0, ceil_mode=True),
            conv=nn.Conv2d(cin, cout, 1, bias=False),
            bn=nn.BatchNorm2d(cout),
        )
    )


LAYERS: dict[str, type[nn.Module]] = {
    "ConvLayer": ConvLayer,
    "IdentityLayer": IdentityLayer,
    "LinearLayer": LinearLayer,
    "MBConvLayer": MBConvLayer,
    "MBInvertedConvLayer": MBConvLayer,
    "ResNetBottleneckBlock": ResNetBottleneckBlock,
}


def layer_from_config(config: dict[str, Any] | None) -> nn.Module | None:
    """Build a static layer from its official JSON config (old and new names)."""
    if config is None:
        return None
    config = dict(config)
    name = config.pop("name", None)
    if name in ("ResidualBlock", "MobileInvertedResidualBlock"):
        conv = config.get("conv", config.get("mobile_inverted_conv"))
        return ResidualBlock(layer_from_config(conv), layer_from_config(config.get("shortcut")))
    if name not in LAYERS:
        raise ValueError(f"unknown layer {name!r} in net config; known layers: {sorted(LAYERS)}")
    return LAYERS[name](**config)
