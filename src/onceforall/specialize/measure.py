"""Wall-clock latency of a model's forward pass, measured the same way everywhere."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Timing:
    """Milliseconds per forward pass: median and the spread between the 10th and 90th percentiles."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(model: nn.Module, inputs: torch.Tensor, warmup: int = 5, repeats: int = 20) -> Timing:
    """Time `model(inputs)` in eval mode after `warmup` untimed runs."""
    model.eval()
    device = inputs.device
    for _ in range(warmup):
        model(inputs)
    _sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(inputs)
        _sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(samples, n=10) if repeats > 1 else samples * 9
    return Timing(statistics.median(samples), deciles[0], deciles[-1], repeats)
