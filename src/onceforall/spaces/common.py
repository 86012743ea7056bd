"""Helpers shared by the supernets: argument lists, BN settings, input and checkpoint checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from onceforall.arch import Arch, SearchSpace
from onceforall.errors import ArchError, CheckpointError, OFAError


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
        raise CheckpointError(
            f"the state dict does not fit {type(net).__name__}: "
            + "; ".join(problems)
            + ". Was it saved from a network of another width, kernel/expand/depth lists or class count?"
        )
    return nn.Module.load_state_dict(net, state_dict, strict=strict, assign=assign)


class Supernet(nn.Module):
    """What every supernet shares: its cached search space, Arch activation and checked loading."""

    resolutions: tuple[int, ...]
    _space: SearchSpace | None = None

    def make_space(self, resolutions: tuple[int, ...]) -> SearchSpace:
        raise NotImplementedError

    def search_space(self, resolutions: Sequence[int] | None = None) -> SearchSpace:
        """The space of this supernet's subnets (at its resolutions unless others are given)."""
        if resolutions is not None:
            return self.make_space(tuple(resolutions))
        if self._space is None:
            self._space = self.make_space(self.resolutions)
        return self._space

    def set_arch(self, arch: Arch) -> None:
        """Activate an `Arch` of this supernet's space (its resolution is the caller's business)."""
        self.set_active_subnet(**self.search_space().validate(arch).subnet_kwargs())

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load our own layout; shape or key mismatches raise CheckpointError naming them."""
        return load_checked(self, state_dict, strict=strict, assign=assign)
