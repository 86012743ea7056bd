"""Small shared pieces: channel rounding, activations, padding, 1x1 convolutions of 1x1 maps."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10 %."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(kernel_size: int) -> int:
    """Padding that keeps the spatial size at stride 1 (odd kernels only)."""
    return kernel_size // 2


def out_size(size: int, stride: int) -> int:
    """Spatial size after a same-padded convolution with `stride`."""
    return (size - 1) // stride + 1


ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "h_swish": lambda: nn.Hardswish(inplace=True),
    "h_sigmoid": lambda: nn.Hardsigmoid(inplace=True),
}


def build_activation(name: str | None) -> nn.Module | None:
    """The activation module for an official `act_func` name (None for no activation)."""
    if name is None:
        return None
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 1x1 convolution; of a 1x1 map it runs as a matmul, several times faster on CPU."""
    if x.shape[-2:] != (1, 1):
        return F.conv2d(x, weight, bias)
    return F.linear(x.flatten(1), weight.flatten(1), bias)[:, :, None, None]


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` whose unpadded, ungrouped 1x1 convolutions of 1x1 maps run as matmuls (`pointwise`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.kernel_size == (1, 1)
            and self.padding == (0, 0)
            and self.groups == 1
            and x.shape[-2:] == (1, 1)
        ):
            return pointwise(x, self.weight, self.bias)
        return super().forward(x)
