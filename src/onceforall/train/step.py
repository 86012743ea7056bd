"""One progressive-shrinking step's forward and backward passes: teacher targets, then K subnets."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    soft_target: torch.Tensor | None,
    *,
    label_smoothing: float = 0.1,
    kd_ratio: float = 1.0,
) -> torch.Tensor:
    """`CE_ls(logits, labels) + kd_ratio * CE(logits, soft_target)`, the original's student loss.

    `soft_target` holds probabilities (a teacher's softmax at temperature 1); None, or `kd_ratio`
    0, leaves the label term alone. The one loss of supernet training and subnet fine-tuning.
    """
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if soft_target is not None and kd_ratio > 0:
        loss = loss + kd_ratio * F.cross_entropy(logits, soft_target)
    return loss


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
    inplace_distill: bool = False,
) -> float:
    """Backward `CE_ls + kd_ratio * CE(student, softmax(teacher))` for every subnet on the same batch.

    Gradients accumulate over subnets (the optimizer steps once after all of them). With
    `micro_batches` m, sample i goes to micro-batch i mod m, each with its own BN statistics,
    exactly as m ranks would see it. Returns the mean loss over subnets.

    `inplace_distill` (BigNAS / AttentiveNAS): `subnets[0]` must be the largest; it learns from
    the labels alone, and the softmax of its logits on each micro-batch, detached, is the soft
    target of every later subnet on that micro-batch. `teacher` must then be None.
    """
    if inplace_distill and teacher is not None:
        raise ValueError("inplace_distill takes its soft targets from subnets[0]; pass teacher=None")
    amp = autocast or contextlib.nullcontext()
    chunks = [(images[i::micro_batches], labels[i::micro_batches]) for i in range(micro_batches)]
    targets: list[torch.Tensor | None] = [None] * micro_batches
    if teacher is not None and kd_ratio > 0:
        with torch.no_grad(), amp:
            targets = [F.softmax(teacher(x).float(), dim=1) for x, _ in chunks]
    total = 0.0
    for k, subnet in enumerate(subnets):
        net.set_active_subnet(**subnet)
        for m, (x, y) in enumerate(chunks):
            with amp:
                logits = net(x).float()
            loss = distillation_loss(
                logits, y, targets[m], label_smoothing=label_smoothing, kd_ratio=kd_ratio
            )
            if inplace_distill and k == 0:
                # The largest's own outputs of this step, with its dropout: no gradient flows from the
                # students into it through the targets (detach), as in BigNAS.
                targets[m] = F.softmax(logits.detach(), dim=1)
            (loss / micro_batches).backward()
            total += loss.item() / micro_batches
    return total / len(subnets)
