"""Static descriptions of single layers: shapes in, MACs and parameters out.

Search spaces describe every layer a subnet can contain as a `LayerSpec`; efficiency models
(MACs, params, latency tables) are tables over these specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from onceforall.nn.ops import make_divisible, out_size
from onceforall.nn.static import (
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    ResNetBottleneckBlock,
)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of an extracted subnet at a given input size.

    op: "conv" (conv+optional BN+act), "mbconv", "pool" (global average), "linear",
    "bottleneck" (ResNet: 1x1 in_size, kxk stride, 1x1, plus a 1x1 downsample unless `shortcut`),
    "maxpool". `shortcut` marks an identity skip (its add is not counted).
    """

    op: str
    in_size: int
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    mid_channels: int = 0
    use_se: bool = False
    act: str | None = None
    use_bn: bool = True
    bias: bool = False
    groups: int = 1
    shortcut: bool = False

    @property
    def out_size(self) -> int:
        return out_size(self.in_size, self.stride)

    @property
    def width(self) -> int:
        """Channels of the depthwise stage (MBConv without expansion: the input channels)."""
        return self.mid_channels or self.in_channels

    @property
    def se_channels(self) -> int:
        return make_divisible(self.width // 4) if self.use_se else 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of convolutions and linear layers (BN, activations, pooling excluded)."""
        cin, cout, k, h = self.in_channels, self.out_channels, self.kernel_size, self.out_size
        if self.op == "conv":
            return cin * cout * k * k * h * h // self.groups
        if self.op == "mbconv":
            width = self.width
            expand = cin * self.mid_channels * self.in_size**2
            return expand + width * k * k * h * h + 2 * width * self.se_channels + width * cout * h * h
        if self.op == "bottleneck":
            mid = self.mid_channels
            downsample = 0 if self.shortcut else cin * cout * h * h
            middle = mid * mid * k * k * h * h // self.groups
            return cin * mid * self.in_size**2 + middle + mid * cout * h * h + downsample
        if self.op == "linear":
            return cin * cout
        if self.op in ("pool", "maxpool"):
            return 0
        raise ValueError(f"unknown op {self.op!r}")

    @property
    def params(self) -> int:
        """Learnable parameters (BN affine included, running statistics excluded)."""
        cin, cout, k, mid = self.in_channels, self.out_channels, self.kernel_size, self.mid_channels
        if self.op == "conv":
            return cin * cout * k * k // self.groups + cout * (self.bias + 2 * self.use_bn)
        if self.op == "mbconv":
            width, s = self.width, self.se_channels
            expand = cin * mid + 2 * mid
            se = width * s + s + s * width + width if self.use_se else 0
            return expand + width * k * k + 2 * width + se + width * cout + 2 * cout
        if self.op == "bottleneck":
            downsample = 0 if self.shortcut else cin * cout + 2 * cout
            return cin * mid + mid * mid * k * k // self.groups + 4 * mid + mid * cout + 2 * cout + downsample
        if self.op == "linear":
            return cin * cout + cout * self.bias
        if self.op in ("pool", "maxpool"):
            return 0
        raise ValueError(f"unknown op {self.op!r}")

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of the tensor the layer takes: [N, C] for "linear", else [N, C, H, W]."""
        if self.op == "linear":
            return (batch, self.in_channels)
        return (batch, self.in_channels, self.in_size, self.in_size)

    def build(self) -> nn.Module:
        """The static layer this spec describes, with fresh weights, as an extracted subnet holds it."""
        cin, cout, k, s = self.in_channels, self.out_channels, self.kernel_size, self.stride
        if self.op == "conv":
            layer = ConvLayer(
                cin, cout, k, s, groups=self.groups, bias=self.bias, use_bn=self.use_bn, act_func=self.act
            )
            return ResidualBlock(layer, IdentityLayer(cin, cin)) if self.shortcut else layer
        if self.op == "mbconv":
            ratio = self.mid_channels / cin if self.mid_channels else 1
            layer = MBConvLayer(cin, cout, k, s, ratio, self.mid_channels or None, self.act, self.use_se)
            return ResidualBlock(layer, IdentityLayer(cin, cin) if self.shortcut else None)
        if self.op == "bottleneck":
            mid, groups = self.mid_channels, self.groups
            return ResNetBottleneckBlock(cin, cout, k, s, mid_channels=mid, act_func=self.act, groups=groups)
        if self.op == "linear":
            return LinearLayer(cin, cout, self.bias)
        if self.op == "pool":
            return GlobalAvgPool()
        if self.op == "maxpool":
            return nn.MaxPool2d(k, s, k // 2)
        raise ValueError(f"unknown op {self.op!r}")


def spec_of(layer: nn.Module, in_size: int) -> LayerSpec:
    """The spec of a static layer of a supernet's stem or head at input size `in_size`.

    ConvLayer, LinearLayer, or a ResidualBlock of an MBConvLayer (the first block of the MBConv families).
    """
    if isinstance(layer, ConvLayer):
        k, s, cin, cout = layer.kernel_size, layer.stride, layer.in_channels, layer.out_channels
        return LayerSpec(
            "conv",
            in_size,
            cin,
            cout,
            k,
            s,
            act=layer.act_func,
            use_bn=layer.use_bn,
            bias=layer.bias,
            groups=layer.groups,
        )
    if isinstance(layer, LinearLayer):
        return LayerSpec("linear", 1, layer.in_features, layer.out_features, bias=layer.bias, use_bn=False)
    if isinstance(layer, ResidualBlock) and isinstance(layer.conv, MBConvLayer):
        conv = layer.conv
        if conv.expand_ratio != 1:
            raise ValueError("spec_of covers MBConv blocks without expansion (the first block) only")
        return LayerSpec(
            "mbconv",
            in_size,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            use_se=conv.use_se,
            act=conv.act_func,
            shortcut=layer.shortcut is not None,
        )
    raise ValueError(f"no spec for a {type(layer).__name__}")


class GlobalAvgPool(nn.Module):
    """Global average pooling that keeps the spatial dimensions ([N, C, 1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)
