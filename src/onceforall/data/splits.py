"""Fixed-seed holdout split of a training set (OFA holds out 10k ImageNet train images for BN/search)."""

from __future__ import annotations

import torch

from onceforall.errors import DataError

HOLDOUT_SEED = 2147483647  # the seed the original uses for its validation holdout


def holdout_split(n: int, holdout: int, seed: int = HOLDOUT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, holdout_idx) int64: a seeded permutation of range(n), the first `holdout` held out."""
    if not 0 <= holdout < n:
        raise DataError(f"holdout={holdout} must be in [0, n) for n={n} samples; hold out fewer samples")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    return perm[holdout:], perm[:holdout]
