"""Random weights that keep the signal alive, for parity tests that must see the input.

Plain N(0, 0.2) weights with random BN statistics let activations decay (or grow) until the
logits no longer depend on the input (or float32 rounding dominates). Here BN statistics are
measured on a random batch, so every layer sees unit-scale activations.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def randomize_signal(net: nn.Module, seed: int = 0, size: int = 64) -> nn.Module:
    """Fan-in scaled weights, BN gains in [0.5, 1.5], kernel matrices near identity, and BN
    statistics measured on one random batch through the largest subnet (so not the defaults)."""
    g = torch.Generator().manual_seed(seed)
    for name, tensor in net.state_dict().items():
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=g)
        if name.endswith("_matrix"):
            tensor.copy_(torch.eye(tensor.shape[0]) + 0.1 * noise)
        elif name.endswith("bn.weight"):
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        elif tensor.dim() > 1:
            tensor.copy_(noise * tensor[0].numel() ** -0.5)
        else:
            tensor.copy_(0.1 * noise)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exact batch statistics
    if hasattr(net, "set_max_net"):
        net.set_max_net()
    training = net.training
    channels = getattr(net, "in_channels", 3)
    net.train()(torch.randn(4, channels, size, size, generator=g))
    net.train(training)
    for bn in norms:
        bn.momentum = 0.1
    return net


def input_matters(y: torch.Tensor, min_rel: float = 1e-4) -> bool:
    """Whether the outputs of the first two batch items differ by more than `min_rel` of the scale."""
    return ((y[0] - y[1]).abs().max() / y.abs().max()).item() > min_rel
