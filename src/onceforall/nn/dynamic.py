"""Elastic operators: each owns the full-size weights and slices the leading channels at run time.

The number of active input channels is always read from the incoming tensor. Parameter and
buffer names follow the official package (`conv.conv.weight`, `bn.bn.*`, `7to5_matrix`, ...).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from onceforall.nn.ops import build_activation, make_divisible, pointwise, same_padding
from onceforall.nn.static import (
    ConvLayer,
    IdentityLayer,
    LinearLayer,
    MBConvLayer,
    ResNetBottleneckBlock,
    SEModule,
)


def leading(tensor: torch.Tensor, *sizes: int) -> torch.Tensor:
    """The first `sizes[d]` entries along each leading dim d, slicing only the dims that shrink.

    A full-range slice is no free view in training: its backward zero-fills and copies the gradient.
    """
    for dim, size in enumerate(sizes):
        if size != tensor.shape[dim]:
            tensor = tensor.narrow(dim, 0, size)
    return tensor


def center_window(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` taps of a [C, 1, K, K] filter."""
    start = kernel.shape[-1] // 2 - size // 2
    return kernel[:, :, start : start + size, start : start + size]


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv with an elastic kernel size.

    Smaller kernels are the centre of the largest one, passed through a learned linear map per
    adjacent pair of sizes (`7to5_matrix`, `5to3_matrix`, identity at init) and chained 7->5->3.
    """

    def __init__(self, max_channels: int, kernel_size_list: list[int], stride: int = 1):
        super().__init__()
        self.kernel_size_list = sorted(kernel_size_list)
        self.stride = stride
        max_k = self.kernel_size_list[-1]
        self.conv = nn.Conv2d(max_channels, max_channels, max_k, stride, groups=max_channels, bias=False)
        for small, large in zip(self.kernel_size_list[:-1], self.kernel_size_list[1:]):
            self.register_parameter(f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small)))
        self.active_kernel_size = max_k

    def active_filter(self, channels: int, kernel_size: int) -> torch.Tensor:
        """The [channels, 1, k, k] filter used at `kernel_size` (kernel transforms included)."""
        weight = leading(self.conv.weight, channels)
        sizes = self.kernel_size_list
        if kernel_size not in sizes:
            raise ValueError(f"kernel size {kernel_size} is not one of {sizes}")
        for large, small in zip(sizes[::-1], sizes[-2::-1]):
            if large == kernel_size:
                break
            window = center_window(weight, small).reshape(channels, small * small)
            matrix = getattr(self, f"{large}to{small}_matrix")
            weight = (window @ matrix.t()).reshape(channels, 1, small, small)
        return weight

    def forward(self, x: torch.Tensor, kernel_size: int | None = None) -> torch.Tensor:
        k = kernel_size or self.active_kernel_size
        channels = x.shape[1]
        weight = self.active_filter(channels, k)
        return F.conv2d(x, weight, None, self.stride, same_padding(k), 1, channels)


class DynamicConv2d(nn.Module):
    """Dense conv (1x1 in MBConv blocks) with elastic input and output channels."""

    def __init__(self, max_in_channels: int, max_out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv2d(max_in_channels, max_out_channels, kernel_size, stride, bias=False)
        self.active_out_channel = max_out_channels

    def forward(self, x: torch.Tensor, out_channel: int | None = None) -> torch.Tensor:
        out_channel = out_channel or self.active_out_channel
        weight = leading(self.conv.weight, out_channel, x.shape[1])
        return F.conv2d(x, weight, None, self.stride, same_padding(self.kernel_size))


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over the leading channels of the full statistics and affine parameters.

    At full width it is the plain module. Narrower, it normalises with slices: in training the
    first C running statistics are updated in place (momentum as set), in eval they are used.
    """

    def __init__(self, max_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(max_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, channels = self.bn, x.shape[1]
        if channels == bn.num_features:
            return bn(x)
        factor = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
        use_batch_stats = bn.training or not bn.track_running_stats
        return F.batch_norm(
            x,
            bn.running_mean[:channels] if bn.track_running_stats else None,
            bn.running_var[:channels] if bn.track_running_stats else None,
            bn.weight[:channels],
            bn.bias[:channels],
            use_batch_stats,
            factor,
            bn.eps,
        )


class DynamicSE(SEModule):
    """SE whose hidden width follows the active channels: hidden = make_divisible(C // 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        hidden = make_divisible(channels // self.reduction)
        reduce, expand = self.fc.reduce, self.fc.expand
        y = x.mean((2, 3), keepdim=True)
        reduce_weight = leading(reduce.weight, hidden, channels)
        expand_weight = leading(expand.weight, channels, hidden)
        y = F.relu(pointwise(y, reduce_weight, leading(reduce.bias, hidden)), inplace=True)
        y = F.hardsigmoid(pointwise(y, expand_weight, leading(expand.bias, channels)), inplace=True)
        return x * y


class DynamicLinear(nn.Module):
    """Linear layer with elastic input features (`linear.linear.*` keys)."""

    def __init__(self, max_in_features: int, out_features: int, bias: bool = True, dropout_rate: float = 0.0):
        super().__init__()
        self.dropout_rate = dropout_rate
        self.dropout = nn.Dropout(dropout_rate, inplace=True) if dropout_rate > 0 else None
        self.linear = nn.Linear(max_in_features, out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        weight = self.linear.weight
        return F.linear(x, leading(weight, weight.shape[0], x.shape[1]), self.linear.bias)


class DynamicMBConvLayer(nn.Module):
    """MBConv block with elastic kernel size and expand ratio (fixed output width)."""

    def __init__(
        self,
        in_channel_list: list[int],
        out_channel_list: list[int],
        kernel_size_list: list[int],
        expand_ratio_list: list[float],
        stride: int = 1,
        act_func: str = "relu6",
        use_se: bool = False,
    ):
        super().__init__()
        self.in_channel_list, self.out_channel_list = list(in_channel_list), list(out_channel_list)
        self.kernel_size_list = sorted(kernel_size_list)
        self.expand_ratio_list = sorted(expand_ratio_list)
        self.stride, self.act_func, self.use_se = stride, act_func, use_se
        max_in, max_out = max(self.in_channel_list), max(self.out_channel_list)
        max_mid = make_divisible(round(max_in * self.expand_ratio_list[-1]))
        self.inverted_bottleneck = nn.Sequential(
            OrderedDict(
                conv=DynamicConv2d(max_in, max_mid),
                bn=DynamicBatchNorm2d(max_mid),
                act=build_activation(act_func),
            )
        )
        depth = OrderedDict(
            conv=DynamicSeparableConv2d(max_mid, self.kernel_size_list, stride),
            bn=DynamicBatchNorm2d(max_mid),
            act=build_activation(act_func),
        )
        if use_se:
            depth["se"] = DynamicSE(max_mid)
        self.depth_conv = nn.Sequential(depth)
        self.point_linear = nn.Sequential(
            OrderedDict(conv=DynamicConv2d(max_mid, max_out), bn=DynamicBatchNorm2d(max_out))
        )
        self.active_kernel_size = self.kernel_size_list[-1]
        self.active_expand_ratio = self.expand_ratio_list[-1]
        self.active_out_channel = max_out

    def active_middle_channel(self, in_channel: int) -> int:
        return make_divisible(round(in_channel * self.active_expand_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inverted_bottleneck.conv.active_out_channel = self.active_middle_channel(x.shape[1])
        self.depth_conv.conv.active_kernel_size = self.active_kernel_size
        self.point_linear.conv.active_out_channel = self.active_out_channel
        return self.point_linear(self.depth_conv(self.inverted_bottleneck(x)))

    def get_active_subnet_config(self, in_channel: int) -> dict:
        return {
            "name": "MBConvLayer",
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "kernel_size": self.active_kernel_size,
            "stride": self.stride,
            "expand_ratio": self.active_expand_ratio,
            "mid_channels": self.active_middle_channel(in_channel),
            "act_func": self.act_func,
            "use_se": self.use_se,
            "groups": None,
        }

    @torch.no_grad()
    def get_active_subnet(self, in_channel: int, preserve_weight: bool = True) -> MBConvLayer:
        config = self.get_active_subnet_config(in_channel)
        config.pop("name")
        layer = MBConvLayer(**config)
        if not preserve_weight:
            return layer
        mid, out = config["mid_channels"], self.active_out_channel
        copy_conv(
            layer.inverted_bottleneck.conv, self.inverted_bottleneck.conv.conv.weight[:mid, :in_channel]
        )
        copy_bn(layer.inverted_bottleneck.bn, self.inverted_bottleneck.bn.bn)
        copy_conv(layer.depth_conv.conv, self.depth_conv.conv.active_filter(mid, self.active_kernel_size))
        copy_bn(layer.depth_conv.bn, self.depth_conv.bn.bn)
        if self.use_se:
            hidden = make_divisible(mid // 4)
            src, dst = self.depth_conv.se.fc, layer.depth_conv.se.fc
            copy_conv(dst.reduce, src.reduce.weight[:hidden, :mid], src.reduce.bias[:hidden])
            copy_conv(dst.expand, src.expand.weight[:mid, :hidden], src.expand.bias[:mid])
        copy_conv(layer.point_linear.conv, self.point_linear.conv.conv.weight[:out, :mid])
        copy_bn(layer.point_linear.bn, self.point_linear.bn.bn)
        return layer

    @torch.no_grad()
    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort middle channels by importance (L1 of the projection), protecting narrower widths."""
        importance = self.point_linear.conv.conv.weight.abs().sum(dim=(0, 2, 3))
        if expand_ratio_stage > 0:
            ratios = sorted(self.expand_ratio_list, reverse=True)
            max_in = max(self.in_channel_list)
            targets = [make_divisible(round(max_in * e)) for e in ratios]
            offset, right = -len(targets) * 1e5, len(importance)
            for target in targets[: expand_ratio_stage + 1]:
                importance[target:right] += offset
                offset += 1e5
                right = target
        order = torch.argsort(importance, descending=True)
        self.point_linear.conv.conv.weight.copy_(self.point_linear.conv.conv.weight[:, order])
        permute_bn(self.depth_conv.bn.bn, order)
        self.depth_conv.conv.conv.weight.copy_(self.depth_conv.conv.conv.weight[order])
        if self.use_se:
            fc = self.depth_conv.se.fc
            fc.expand.weight.copy_(fc.expand.weight[order])
            fc.expand.bias.copy_(fc.expand.bias[order])
            fc.reduce.weight.copy_(fc.reduce.weight[:, order])
            hidden_order = torch.argsort(fc.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            fc.expand.weight.copy_(fc.expand.weight[:, hidden_order])
            fc.reduce.weight.copy_(fc.reduce.weight[hidden_order])
            fc.reduce.bias.copy_(fc.reduce.bias[hidden_order])
        permute_bn(self.inverted_bottleneck.bn.bn, order)
        ib = self.inverted_bottleneck.conv.conv
        ib.weight.copy_(ib.weight[order])


class DynamicLinearLayer(nn.Module):
    """Classifier with elastic input features, keys `linear.linear.*` (the ResNet supernet's head)."""

    def __init__(
        self, in_features_list: list[int], out_features: int, bias: bool = True, dropout_rate: float = 0.0
    ):
        super().__init__()
        self.in_features_list, self.out_features = list(in_features_list), out_features
        self.bias, self.dropout_rate = bias, dropout_rate
        self.dropout = nn.Dropout(dropout_rate, inplace=True) if dropout_rate > 0 else None
        self.linear = DynamicLinear(max(self.in_features_list), out_features, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)

    def get_active_subnet_config(self, in_features: int) -> dict:
        return {
            "name": "LinearLayer",
            "in_features": in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "use_bn": False,
            "act_func": None,
            "dropout_rate": self.dropout_rate,
            "ops_order": "weight_bn_act",
        }

    @torch.no_grad()
    def get_active_subnet(self, in_features: int, preserve_weight: bool = True) -> LinearLayer:
        layer = LinearLayer(in_features, self.out_features, self.bias, dropout_rate=self.dropout_rate)
        if preserve_weight:
            layer.linear.weight.copy_(self.linear.linear.weight[:, :in_features])
            if self.bias:
                layer.linear.bias.copy_(self.linear.linear.bias)
        return layer


class DynamicConvLayer(nn.Module):
    """Conv -> BN -> act with elastic input and output channels (keys `conv.conv.*`, `bn.bn.*`)."""

    def __init__(
        self,
        in_channel_list: list[int],
        out_channel_list: list[int],
        kernel_size: int = 3,
        stride: int = 1,
        use_bn: bool = True,
        act_func: str | None = "relu6",
    ):
        super().__init__()
        self.in_channel_list, self.out_channel_list = list(in_channel_list), list(out_channel_list)
        self.kernel_size, self.stride, self.use_bn, self.act_func = kernel_size, stride, use_bn, act_func
        max_in, max_out = max(self.in_channel_list), max(self.out_channel_list)
        self.conv = DynamicConv2d(max_in, max_out, kernel_size, stride)
        if use_bn:
            self.bn = DynamicBatchNorm2d(max_out)
        act = build_activation(act_func)
        if act is not None:
            self.act = act
        self.active_out_channel = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv.active_out_channel = self.active_out_channel
        for module in self.children():
            x = module(x)
        return x

    def get_active_subnet_config(self, in_channel: int) -> dict:
        return {
            "name": "ConvLayer",
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "dilation": 1,
            "groups": 1,
            "bias": False,
            "has_shuffle": False,
            "use_se": False,
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "use_bn": self.use_bn,
            "act_func": self.act_func,
            "dropout_rate": 0,
            "ops_order": "weight_bn_act",
        }

    @torch.no_grad()
    def get_active_subnet(self, in_channel: int, preserve_weight: bool = True) -> ConvLayer:
        config = self.get_active_subnet_config(in_channel)
        config.pop("name")
        layer = ConvLayer(**config)
        if preserve_weight:
            copy_conv(layer.conv, self.conv.conv.weight[: self.active_out_channel, :in_channel])
            if self.use_bn:
                copy_bn(layer.bn, self.bn.bn)
        return layer


class DynamicResNetBottleneckBlock(nn.Module):
    """ResNet bottleneck with elastic expand ratio and output width (index into `out_channel_list`).

    Middle width = make_divisible(round(active_out_channel * active_expand_ratio)); the skip is an
    identity when stride is 1 and the in/out width lists are equal, else a (pooled) 1x1 projection.
    """

    def __init__(
        self,
        in_channel_list: list[int],
        out_channel_list: list[int],
        expand_ratio_list: list[float],
        kernel_size: int = 3,
        stride: int = 1,
        act_func: str = "relu",
        downsample_mode: str = "avgpool_conv",
    ):
        super().__init__()
        if downsample_mode not in ("avgpool_conv", "conv"):
            raise ValueError(f"downsample_mode must be 'avgpool_conv' or 'conv', got {downsample_mode!r}")
        self.in_channel_list, self.out_channel_list = list(in_channel_list), list(out_channel_list)
        self.expand_ratio_list = sorted(expand_ratio_list)
        self.kernel_size, self.stride = kernel_size, stride
        self.act_func, self.downsample_mode = act_func, downsample_mode
        max_in, max_out = max(self.in_channel_list), max(self.out_channel_list)
        max_mid = make_divisible(round(max_out * self.expand_ratio_list[-1]))
        self.conv1 = _dynamic_conv_bn(max_in, max_mid, 1, 1, act_func)
        self.conv2 = _dynamic_conv_bn(max_mid, max_mid, kernel_size, stride, act_func)
        self.conv3 = _dynamic_conv_bn(max_mid, max_out, 1, 1, None)
        if stride == 1 and self.in_channel_list == self.out_channel_list:
            self.downsample: nn.Module = IdentityLayer(max_in, max_out)
        elif downsample_mode == "conv":
            self.downsample = nn.Sequential(
                OrderedDict(conv=DynamicConv2d(max_in, max_out, 1, stride), bn=DynamicBatchNorm2d(max_out))
            )
        else:
            self.downsample = nn.Sequential(
                OrderedDict(
                    avg_pool=nn.AvgPool2d(stride, stride, 0, ceil_mode=True),
                    conv=DynamicConv2d(max_in, max_out),
                    bn=DynamicBatchNorm2d(max_out),
                )
            )
        self.final_act = build_activation(act_func)
        self.active_expand_ratio = self.expand_ratio_list[-1]
        self.active_out_channel = max_out

    @property
    def active_middle_channels(self) -> int:
        return make_divisible(round(self.active_out_channel * self.active_expand_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.active_middle_channels
        self.conv1.conv.active_out_channel = self.conv2.conv.active_out_channel = mid
        self.conv3.conv.active_out_channel = self.active_out_channel
        if not isinstance(self.downsample, IdentityLayer):
            self.downsample.conv.active_out_channel = self.active_out_channel
        residual = self.downsample(x)
        return self.final_act(self.conv3(self.conv2(self.conv1(x))) + residual)

    def get_active_subnet_config(self, in_channel: int) -> dict:
        return {
            "name": "ResNetBottleneckBlock",
            "in_channels": in_channel,
            "out_channels": self.active_out_channel,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "expand_ratio": self.active_expand_ratio,
            "mid_channels": self.active_middle_channels,
            "act_func": self.act_func,
            "groups": 1,
            "downsample_mode": self.downsample_mode,
        }

    @torch.no_grad()
    def get_active_subnet(self, in_channel: int, preserve_weight: bool = True) -> ResNetBottleneckBlock:
        config = self.get_active_subnet_config(in_channel)
        config.pop("name")
        block = ResNetBottleneckBlock(**config)
        if not preserve_weight:
            return block
        mid, out = self.active_middle_channels, self.active_out_channel
        for dst, src, n_out, n_in in (
            (block.conv1, self.conv1, mid, in_channel),
            (block.conv2, self.conv2, mid, mid),
            (block.conv3, self.conv3, out, mid),
        ):
            copy_conv(dst.conv, src.conv.conv.weight[:n_out, :n_in])
            copy_bn(dst.bn, src.bn.bn)
        if not isinstance(self.downsample, IdentityLayer):
            copy_conv(block.downsample.conv, self.downsample.conv.conv.weight[:out, :in_channel])
            copy_bn(block.downsample.bn, self.downsample.bn.bn)
        return block

    @torch.no_grad()
    def re_organize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort the middle channels by importance: conv3's inputs order conv2, then conv2's order conv1."""
        max_out = max(self.out_channel_list)
        for src, dst in ((self.conv3, self.conv2), (self.conv2, self.conv1)):
            importance = src.conv.conv.weight.abs().sum(dim=(0, 2, 3))
            order = _protected_order(importance, self.expand_ratio_list, max_out, expand_ratio_stage)
            src.conv.conv.weight.copy_(src.conv.conv.weight[:, order])
            permute_bn(dst.bn.bn, order)
            dst.conv.conv.weight.copy_(dst.conv.conv.weight[order])


def _dynamic_conv_bn(cin: int, cout: int, kernel: int, stride: int, act: str | None) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=DynamicConv2d(cin, cout, kernel, stride), bn=DynamicBatchNorm2d(cout)
    )
    if act is not None:
        layers["act"] = build_activation(act)
    return nn.Sequential(layers)


def _protected_order(
    importance: torch.Tensor, ratios: list[float], base_width: int, stage: int
) -> torch.Tensor:
    """Channel order by descending importance; at stage > 0 narrower trained widths stay in front."""
    importance = importance.clone()
    if stage > 0:
        targets = [make_divisible(round(base_width * e)) for e in sorted(ratios, reverse=True)]
        offset, right = -len(targets) * 1e5, len(importance)
        for target in targets[: stage + 1]:
            importance[target:right] += offset
            offset += 1e5
            right = target
    return torch.argsort(importance, descending=True)


def copy_conv(dst: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Copy a (sliced) weight and optional bias into a static conv."""
    dst.weight.data.copy_(weight)
    if bias is not None:
        dst.bias.data.copy_(bias)


def copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d) -> None:
    """Copy the leading channels of a BN's affine parameters and running statistics."""
    c = dst.num_features
    dst.weight.data.copy_(src.weight[:c])
    dst.bias.data.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.momentum, dst.eps = src.momentum, src.eps


def permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    """Reorder a BN's channels (affine parameters and running statistics)."""
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        tensor.data.copy_(tensor.data[order])
