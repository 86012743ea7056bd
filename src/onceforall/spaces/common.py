"""Helpers shared by the supernets: argument lists, BN settings, input and checkpoint checks,
and the official API (`module_str`, `config`, BN parameters) over our elastic layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import ArchError, CheckpointError, OFAError
from onceforall.nn.dynamic import (
    DynamicConvLayer,
    DynamicLinearLayer,
    DynamicMBConvLayer,
    DynamicResNetBottleneckBlock,
)
from onceforall.nn.keys import rename_to_model
from onceforall.nn.static import IdentityLayer, ResidualBlock


def to_list(value: Any, n: int | None = None, name: str = "value") -> list:
    """The official `val2list`: a scalar repeated `n` times (or once), a sequence as a list of length n."""
    if isinstance(value, (list, tuple)):
        if n is not None and len(value) != n:
            raise ArchError(f"{name} has {len(value)} entries; expected {n}")
        return list(value)
    return [value] * (1 if n is None else n)


def set_bn_param(net: nn.Module, momentum: float, eps: float) -> None:
    """Set momentum and eps of every BatchNorm (they are not stored in state dicts)."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum, module.eps = momentum, eps


class OfficialNetwork(nn.Module):
    """The official `MyNetwork` BN methods, shared by the supernets and the static networks."""

    def get_bn_param(self) -> dict[str, Any] | None:
        """`{'momentum', 'eps', 'ws_eps'}` of the first BatchNorm (None without one), as the official method.

        `ws_eps` (weight standardisation) is always None: this library has no weight-standardised convs.
        """
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return {"momentum": module.momentum, "eps": module.eps, "ws_eps": None}
        return None

    def set_bn_param(
        self,
        momentum: float | None,
        eps: float,
        gn_channel_per_group: int | None = None,
        ws_eps: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Set momentum and eps of every BatchNorm; takes `get_bn_param()`'s dict as keywords."""
        if kwargs:
            raise OFAError(
                f"set_bn_param got unknown keywords {sorted(kwargs)}; it takes momentum, eps, "
                "gn_channel_per_group (None) and ws_eps (None)"
            )
        # The official method would swap BN for GroupNorm or convs for weight-standardised ones;
        # the released nets use neither, and ignoring the request would silently change the model.
        if gn_channel_per_group is not None:
            raise OFAError(
                f"gn_channel_per_group = {gn_channel_per_group!r}: GroupNorm is not supported; pass None"
            )
        if ws_eps is not None:
            raise OFAError(f"ws_eps = {ws_eps!r}: weight standardisation is not supported; pass None")
        set_bn_param(self, momentum, eps)


def check_subnet_keywords(net: nn.Module, kwargs: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """An ArchError for any keyword `set_active_subnet` cannot honour (the official one ignores them).

    `wid`, the width-multiplier index of the pre-2020-11 official API, is accepted when it asks
    for nothing: None, or index 0 of a supernet without elastic width.
    """
    takes = ", ".join(allowed)
    for name, value in kwargs.items():
        if name == "wid" and "w" not in allowed:
            if value is None or (type(value) is int and value == 0):
                continue
            raise ArchError(
                f"wid = {value!r} cannot be honoured: wid is the old official width-multiplier index "
                f"and {type(net).__name__} has one width (width_mult={getattr(net, 'width_mult', None)}); "
                "pass wid=None (or leave it out) and build the supernet with the width you want"
            )
        if name in ("r", "image_size"):
            raise ArchError(
                f"set_active_subnet got {name}={value!r}, but the input size is not part of the active "
                "subnet: feed images of that size, or use net.set_arch(Arch.from_dict(config, "
                f"space=net.search_space().name)). set_active_subnet takes {takes}"
            )
        hint = "; the ResNet width indices are `w`" if name == "wid" else ""
        raise ArchError(f"set_active_subnet got an unknown keyword {name!r}{hint}; it takes {takes}")


# ---------------------------------------------------------------------------------------------- official API
# Our elastic layers (nn/dynamic.py) carry no `config` / `module_str`; the official ones do, and
# a supernet's `config` and `module_str` are made of them. These two functions give them, and
# for static layers ask the layer itself.
def layer_config(module: nn.Module | None) -> dict[str, Any] | None:
    """The official `config` of a layer of a supernet (elastic or static)."""
    if module is None:
        return None
    if isinstance(module, ResidualBlock):
        return {
            "name": "ResidualBlock",
            "conv": layer_config(module.conv),
            "shortcut": layer_config(module.shortcut),
        }
    if isinstance(module, DynamicMBConvLayer):
        return {
            "name": "DynamicMBConvLayer",
            "in_channel_list": list(module.in_channel_list),
            "out_channel_list": list(module.out_channel_list),
            "kernel_size_list": list(module.kernel_size_list),
            "expand_ratio_list": list(module.expand_ratio_list),
            "stride": module.stride,
            "act_func": module.act_func,
            "use_se": module.use_se,
        }
    if isinstance(module, DynamicConvLayer):
        return {
            "name": "DynamicConvLayer",
            "in_channel_list": list(module.in_channel_list),
            "out_channel_list": list(module.out_channel_list),
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "dilation": 1,
            "use_bn": module.use_bn,
            "act_func": module.act_func,
        }
    if isinstance(module, DynamicResNetBottleneckBlock):
        return {
            "name": "DynamicResNetBottleneckBlock",
            "in_channel_list": list(module.in_channel_list),
            "out_channel_list": list(module.out_channel_list),
            "expand_ratio_list": list(module.expand_ratio_list),
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "act_func": module.act_func,
            "downsample_mode": module.downsample_mode,
        }
    if isinstance(module, DynamicLinearLayer):
        # "DynamicLinear", not "DynamicLinearLayer": the official config's name, kept so configs compare equal.
        return {
            "name": "DynamicLinear",
            "in_features_list": list(module.in_features_list),
            "out_features": module.out_features,
            "bias": module.bias,
            "dropout_rate": module.dropout_rate,
        }
    return module.config


def layer_module_str(module: nn.Module | None) -> str:
    """The official one-line `module_str` of a layer of a supernet, at its active setting."""
    if module is None:
        return "None"
    if isinstance(module, ResidualBlock):
        return f"({layer_module_str(module.conv)}, {layer_module_str(module.shortcut)})"
    if isinstance(module, DynamicMBConvLayer):
        prefix = "SE" if module.use_se else ""
        return (
            f"{prefix}(O{module.active_out_channel}, E{module.active_expand_ratio:.1f}, "
            f"K{module.active_kernel_size})"
        )
    if isinstance(module, DynamicConvLayer):
        return f"DyConv(O{module.active_out_channel}, K{module.kernel_size}, S{module.stride})"
    if isinstance(module, DynamicResNetBottleneckBlock):
        skip = "Identity" if isinstance(module.downsample, IdentityLayer) else module.downsample_mode
        k = module.kernel_size
        return (
            f"({k}x{k}_BottleneckConv_in->{module.active_middle_channels}->{module.active_out_channel}"
            f"_S{module.stride}, {skip})"
        )
    if isinstance(module, DynamicLinearLayer):
        return f"DyLinear({max(module.in_features_list)}, {module.out_features})"
    return module.module_str


def check_input(x: torch.Tensor, in_channels: int, total_stride: int) -> None:
    """A clear error for inputs the network cannot take."""
    if x.dim() != 4:
        raise OFAError(f"expected a batch of images [N, C, H, W], got a tensor of shape {list(x.shape)}")
    if x.shape[1] != in_channels:
        raise OFAError(
            f"input has {x.shape[1]} channels but the network takes {in_channels}; "
            f"build it with in_channels={x.shape[1]} or convert the images"
        )
    if min(x.shape[2:]) < total_stride:
        raise OFAError(
            f"input of {x.shape[2]}x{x.shape[3]} px is smaller than the network's total stride {total_stride}"
        )


def load_checked(
    net: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
) -> Any:
    """`nn.Module.load_state_dict` that reports missing, unexpected and misshapen keys clearly."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    own = nn.Module.state_dict(net)
    shapes = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state_dict] if strict else []
    unexpected = [k for k in state_dict if k not in own] if strict else []
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensors have another shape, e.g. " + "; ".join(shapes[:3]))
    if missing:
        problems.append(f"{len(missing)} keys are missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys are unknown, e.g. {unexpected[:3]}")
    if problems:
        hint = "Was it saved from a network of another width, kernel/expand/depth lists or class count?"
        if missing and all(k.endswith("_matrix") for k in missing):
            # A static teacher (e.g. ofa_D4_E6_K7) has no kernel transformation matrices.
            hint = (
                "Only kernel transformation matrices are missing: a static teacher checkpoint? "
                "zoo.load_official(net, state_dict) loads it with identity matrices"
            )
        raise CheckpointError(
            f"the state dict does not fit {type(net).__name__}: " + "; ".join(problems) + ". " + hint
        )
    return nn.Module.load_state_dict(net, state_dict, strict=strict, assign=assign)


class Supernet(OfficialNetwork):
    """What every supernet shares: its cached search space, Arch activation and checked loading."""

    resolutions: tuple[int, ...]
    total_stride: int
    _space: SearchSpace | None = None

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        raise NotImplementedError

    def search_space(self, resolutions: Sequence[int] | None = None) -> SearchSpace:
        """The space of this supernet's subnets (at its resolutions unless others are given)."""
        if resolutions is not None:
            return self.make_space(self._checked(resolutions))
        if self._space is None:
            self._space = self.make_space(self._checked(self.resolutions))
        return self._space

    def _checked(self, resolutions: Sequence[int]) -> tuple[int, ...]:
        stride = self.total_stride
        if not resolutions or any(
            isinstance(r, bool) or not isinstance(r, int) or r < stride for r in resolutions
        ):
            raise OFAError(
                f"resolutions must be integers >= the total stride {stride}, got {tuple(resolutions)}"
            )
        return tuple(sorted(resolutions))

    def set_arch(self, arch: Arch) -> None:
        """Activate an `Arch` of this supernet's space (its resolution is the caller's business)."""
        self.set_active_subnet(**self.search_space().validate(arch).subnet_kwargs())

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load our layout or an official one; shape or key mismatches raise CheckpointError naming them.

        Official layouts: old block names (`mobile_inverted_conv`) and static-layer nesting
        (`bn.weight` for `bn.bn.weight`, ...), as the official `load_state_dict` maps them. Unlike
        it, nothing is filled in from the model: with `strict` every tensor must be in the dict.
        """
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(
                f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
            )
        own = set(nn.Module.state_dict(self))
        if not own.issuperset(state_dict):
            # Renaming drops the dict's `_metadata`; our own layout keeps it by passing through.
            state_dict = rename_to_model(state_dict, own)
        return load_checked(self, state_dict, strict=strict, assign=assign)
