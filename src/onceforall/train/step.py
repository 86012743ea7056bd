"""One progressive-shrinking step's forward and backward passes: teacher targets, then K subnets."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def accumulate_gradients(
    net: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    subnets: Sequence[dict[str, Any]],
    *,
    label_smoothing: float = 0.1,
    kd_ratio: float = 1.0,
    micro_batches: int = 1,
    autocast: contextlib.AbstractContextManager | None = None,
) -> float:
    """Backward `CE_ls + kd_ratio * CE(student, softmax(teacher))` for every subnet on the same batch.

    Gradients accumulate over subnets (the optimizer steps once after all of them). With
    `micro_batches` m, sample i goes to micro-batch i mod m, each with its own BN statistics,
    exactly as m ranks would see it. Returns the mean loss over subnets.
    """
    amp = autocast or contextlib.nullcontext()
    chunks = [(images[i::micro_batches], labels[i::micro_batches]) for i in range(micro_batches)]
    targets: list[torch.Tensor | None] = [None] * micro_batches
    if teacher is not None and kd_ratio > 0:
        with torch.no_grad(), amp:
            targets = [F.softmax(teacher(x).float(), dim=1) for x, _ in chunks]
    total = 0.0
    for subnet in subnets:
        net.set_active_subnet(**subnet)
        for (x, y), target in zip(chunks, targets):
            with amp:
                logits = net(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if target is not None:
                loss = loss + kd_ratio * F.cross_entropy(logits, target)
            (loss / micro_batches).backward()
            total += loss.item() / micro_batches
    return total / len(subnets)
