"""Elastic operators and the static layers extracted subnets are built from."""

from onceforall.nn.dynamic import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicConvLayer,
    DynamicLinear,
    DynamicLinearLayer,
    DynamicMBConvLayer,
    DynamicResNetBottleneckBlock,
    DynamicSE,
    DynamicSeparableConv2d,
)
from onceforall.nn.ops import make_divisible
from onceforall.nn.static import (
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResidualBlock,
    ResNetBottleneckBlock,
    SEModule,
    layer_from_config,
)

__all__ = [
    "ConvLayer",
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicConvLayer",
    "DynamicLinear",
    "DynamicLinearLayer",
    "DynamicMBConvLayer",
    "DynamicResNetBottleneckBlock",
    "DynamicSE",
    "DynamicSeparableConv2d",
    "IdentityLayer",
    "LinearLayer",
    "MBConvLayer",
    "ResNetBottleneckBlock",
    "ResidualBlock",
    "SEModule",
    "layer_from_config",
    "make_divisible",
]
