"""Per-iteration learning rate: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    warmup_epochs: int = 0,
    warmup_lr: float | None = None,
) -> float:
    """The rate at `step` (counted from the phase start, warm-up included); warm-up starts at `warmup_lr` or 0."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        start = 0.0 if warmup_lr is None else warmup_lr
        return start + (step + 1) / warmup_steps * (lr - start)
    total = max(1, epochs * steps_per_epoch)
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup_steps) / total))
