"""Shared fixtures: small, seeded supernets."""

from __future__ import annotations

import pytest
import torch

from onceforall import OFAMobileNetV3


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights, BN statistics and kernel-transform matrices, so every path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if "running_var" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif "matrix" in name:
                tensor.copy_(torch.eye(tensor.shape[0]) + 0.1 * torch.randn(tensor.shape, generator=g))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=g))
    return net


@pytest.fixture(scope="module")
def mbv3() -> OFAMobileNetV3:
    torch.manual_seed(0)
    net = OFAMobileNetV3(
        n_classes=10, dropout_rate=0, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]
    )
    return randomize(net).eval()
