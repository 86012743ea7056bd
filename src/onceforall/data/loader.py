"""Batches of a small in-memory dataset on the device: elastic resolution, exact resume, DDP shards."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch

from onceforall.data.augment import (
    Range,
    center_resize,
    crop_boxes,
    flip_mask,
    hflip,
    normalize,
    resized_crop,
)
from onceforall.errors import DataError


def mix_seed(*values: int) -> int:
    """A 63-bit seed that differs for every tuple of integers (unlike seed + epoch, which collides)."""
    data = b"".join(int(v).to_bytes(8, "little", signed=True) for v in values)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class TensorLoader:
    """Yields (normalized float32 images [B, C, R, R], int64 labels [B]) from uint8 images [N, C, H, W].

    Everything random is a function of (seed, epoch, batch index): the epoch's permutation, each batch's
    resolution R (drawn from `resolutions`, the same on every rank) and its crops and flips. So
    `set_epoch(epoch, start_batch=k)` replays an epoch exactly from batch k. With `world_size` ranks, each
    global batch of batch_size * world_size samples is drawn and augmented once, and rank r keeps samples
    r::world_size, so the ranks together see exactly what one process with the global batch sees.
    Train mode: random resized crop (`scale`, `ratio`) to R and random flip; eval: center resize to R.
    Without drop_last the last global batch may leave some ranks a smaller (even empty) batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool = False,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        resolutions: Sequence[int] | None = None,
        seed: int = 0,
        scale: Range = (0.08, 1.0),
        ratio: Range = (3 / 4, 4 / 3),
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise DataError(
                f"labels {tuple(labels.shape)} do not fit {images.shape[0]} images; pass one per image"
            )
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise DataError(f"mean/std need {images.shape[1]} values, one per channel; got {mean}, {std}")
        resolutions = list(resolutions) if resolutions is not None else [images.shape[-1]]
        if not resolutions or min(resolutions) < 1:
            raise DataError(f"resolutions={resolutions} must be a non-empty list of positive sizes")
        device = torch.device(device) if device is not None else images.device
        self.images, self.labels = images.to(device), labels.to(device, torch.int64)
        self.batch_size, self.mean, self.std = batch_size, tuple(mean), tuple(std)
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.resolutions, self.seed, self.scale, self.ratio, self.flip = resolutions, seed, scale, ratio, flip
        self.rank, self.world_size, self.memory_format = rank, world_size, memory_format
        self.epoch, self.start_batch = 0, 0
        if len(self) == 0:
            raise DataError(
                f"{len(images)} samples make no full global batch of {self.global_batch}; "
                f"use a smaller batch_size or drop_last=False"
            )

    @property
    def global_batch(self) -> int:
        """Samples per step over all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate, starting at batch `start_batch` (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch={start_batch} must be in [0, {len(self)}]")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        """int64 sample order of an epoch, on the CPU; the same on every rank."""
        n = self.images.shape[0]
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def _batch_rng(self, epoch: int, batch: int) -> tuple[torch.Generator, int]:
        """The batch's generator, after drawing its resolution, and that resolution."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, batch))
        pick = int(torch.randint(len(self.resolutions), (1,), generator=generator))
        return generator, self.resolutions[pick]

    def resolution_at(self, epoch: int, batch: int) -> int:
        """Image size of batch `batch` of epoch `epoch`."""
        return self._batch_rng(epoch, batch)[1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order(self.epoch)
        mine = slice(self.rank, None, self.world_size)
        for b in range(self.start_batch, len(self)):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            generator, size = self._batch_rng(self.epoch, b)
            index = batch[mine].to(self.images.device)
            images = self.images[index]
            if self.train:
                boxes = crop_boxes(len(batch), *images.shape[-2:], self.scale, self.ratio, generator)
                flips = flip_mask(len(batch), 0.5, generator)
                images = resized_crop(images, boxes[mine], size)
                if self.flip:
                    images = hflip(images, flips[mine])
            else:
                images = center_resize(images, size)
            images = normalize(images, self.mean, self.std).contiguous(memory_format=self.memory_format)
            yield images, self.labels[index]
