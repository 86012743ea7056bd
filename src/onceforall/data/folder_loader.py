"""Batches of a large ImageFolder dataset (ImageNet layout), decoded by DataLoader workers and streamed.

The streaming counterpart of `TensorLoader`, with the same interface so a trainer can take either.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from onceforall.data.augment import Range, crop_boxes, flip_mask, normalize, to_float
from onceforall.data.image_folder import ImageFolder, eval_view, to_tensor
from onceforall.data.loader import mix_seed
from onceforall.data.registry import IMAGENET_SIZE
from onceforall.errors import DataError

_CROP_TAG = 0x0FA  # keeps a sample's crop seed apart from a batch's resolution seed (same seed, epoch)


def _train_view(
    image: Image.Image, size: int, scale: Range, ratio: Range, flip: bool, generator: torch.Generator
) -> Image.Image:
    """Random resized crop of `image` to size x size, mirrored with probability 1/2 when `flip`."""
    top, left, h, w = crop_boxes(1, image.height, image.width, scale, ratio, generator)[0].tolist()
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if flip_mask(1, 0.5, generator)[0] and flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


class _Views(Dataset):
    """Decodes one sample per key (index, (seed, epoch, position in the epoch)): (uint8 [3, size, size], label).

    Train crops and flips come from a generator seeded by the key, so they depend only on the sample's
    place in the epoch, not on which worker or rank decodes it, nor on where the epoch was resumed.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        size: int,
        train: bool,
        scale: Range,
        ratio: Range,
        flip: bool,
    ) -> None:
        self.samples = samples
        self.size, self.train, self.scale, self.ratio, self.flip = size, train, scale, ratio, flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, tuple[int, int, int]]) -> tuple[torch.Tensor, int]:
        index, place = key
        path, label = self.samples[index]
        try:
            with Image.open(path) as f:
                image = f.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from e
        if self.train:
            generator = torch.Generator().manual_seed(mix_seed(*place, _CROP_TAG))
            image = _train_view(image, self.size, self.scale, self.ratio, self.flip, generator)
        else:
            image = eval_view(image, self.size)
        return to_tensor(image), label


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _one_line_errors(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate `loader`, turning a worker's DataError (re-raised by DataLoader as "Caught DataError in
    DataLoader worker process 0. Original Traceback ...") back into its own one-line message."""
    try:
        yield from loader
    except DataError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        last = lines[-1] if lines else str(err)
        raise DataError(last.split("DataError: ", 1)[-1]) from None


def _seed_worker(seed: int, epoch: int, worker_id: int) -> None:
    """Seed a worker's global RNGs from (seed, epoch, worker id), for any augmentation that uses them."""
    worker_seed = mix_seed(seed, epoch, worker_id)
    torch.manual_seed(worker_seed)
    random.seed(worker_seed)
    np.random.seed(worker_seed % 2**32)


class FolderLoader:
    """Yields (normalized float32 images [B, 3, R, R], int64 labels [B]) from an ImageFolder tree.

    `dataset` is a folder of class folders or an `ImageFolder` (its samples and classes are used; the
    loader's own `train`, `scale`, `ratio` and `resolutions` decide the views). `workers` DataLoader
    processes (0: decode in this process) decode each image with Pillow at the largest resolution M:
    train takes a random resized crop (`scale`, `ratio`) to M and a random flip, eval resizes the shorter
    side to ceil(M / 0.875) and center-crops M. On `device` the uint8 batch is resized to the batch's
    resolution R (bilinear, no antialias) and normalized.

    As in `TensorLoader` (whose `mix_seed` rules are reused, so the two agree on the epoch order of N
    samples and on every batch's resolution), everything random is a function of (seed, epoch, batch or
    sample position): `set_epoch(epoch, start_batch=k)` replays an epoch exactly from batch k, whatever
    the number of workers. With `world_size` ranks each global batch of batch_size * world_size samples
    is split so that rank r takes samples r::world_size; a sample's crop depends on its place in the
    epoch only, so the ranks together see exactly what one process with the global batch sees. Without
    drop_last the last global batch may leave some ranks a smaller (even empty) batch.
    """

    def __init__(
        self,
        dataset: str | Path | ImageFolder,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
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
        workers: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        if len(mean) != 3 or len(std) != 3:
            raise DataError(f"mean/std need 3 values, one per RGB channel; got {mean}, {std}")
        for name, (lo, hi) in (("scale", scale), ("ratio", ratio)):
            if not 0 < lo <= hi:
                raise DataError(f"{name}={(lo, hi)} is not a range; pass (low, high) with 0 < low <= high")
        if workers is None:  # as many as the cores, at most 4: more only makes the DataLoader warn and wait
            workers = min(4, os.cpu_count() or 1)
        if workers < 0:
            raise DataError(f"workers={workers} must be 0 (decode in this process) or more")
        if isinstance(dataset, ImageFolder):
            if classes is not None and list(classes) != dataset.classes:
                raise DataError(
                    f"classes={list(classes)[:5]}... differ from the ImageFolder's {dataset.classes[:5]}...; "
                    f"pass classes to the ImageFolder or a folder path instead"
                )
            default = dataset.size
        else:
            default = IMAGENET_SIZE
        resolutions = list(resolutions) if resolutions is not None else [default]
        if not resolutions or min(resolutions) < 1:
            raise DataError(f"resolutions={resolutions} must be a non-empty list of positive sizes")
        if isinstance(dataset, ImageFolder):
            folder = dataset
        else:
            folder = ImageFolder(dataset, max(resolutions), train, classes=classes, scale=scale, ratio=ratio)
        self.dataset, self.classes = folder, list(folder.classes)
        self.batch_size, self.mean, self.std = batch_size, tuple(mean), tuple(std)
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.resolutions, self.seed, self.scale, self.ratio, self.flip = resolutions, seed, scale, ratio, flip
        self.rank, self.world_size, self.memory_format = rank, world_size, memory_format
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.workers = workers
        self.epoch, self.start_batch = 0, 0
        self._views = _Views(folder.samples, max(resolutions), train, scale, ratio, flip)
        if len(self) == 0:
            raise DataError(
                f"{len(folder)} samples make no full global batch of {self.global_batch}; "
                f"use a smaller batch_size or drop_last=False"
            )

    @property
    def global_batch(self) -> int:
        """Samples per step over all ranks."""
        return self.batch_size * self.world_size

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N] label of every sample, without decoding any image."""
        return self.dataset.labels

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate, starting at batch `start_batch` (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch={start_batch} must be in [0, {len(self)}]")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        """int64 sample order of an epoch, on the CPU; the same on every rank (and as TensorLoader's)."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def resolution_at(self, epoch: int, batch: int) -> int:
        """Image size of batch `batch` of epoch `epoch` (TensorLoader's rule)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, batch))
        return self.resolutions[int(torch.randint(len(self.resolutions), (1,), generator=generator))]

    def _batches(self, epoch: int, start_batch: int) -> list[list[tuple[int, tuple[int, int, int]]]]:
        """This rank's sample keys (see `_Views`) of each batch from `start_batch` on."""
        order = self.order(epoch).tolist()
        stop = len(self) * self.global_batch if self.drop_last else len(order)
        positions = range(start_batch * self.global_batch, stop)  # whole batches skipped by slicing
        keys = [(order[p], (self.seed, epoch, p)) for p in positions]  # workers hash them to crop seeds
        return [
            keys[i : i + self.global_batch][self.rank :: self.world_size]
            for i in range(0, len(keys), self.global_batch)
        ]

    def _finish(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """uint8 [B, 3, M, M] on the device -> normalized float32 [B, 3, size, size] in memory_format."""
        images = to_float(images)
        if images.shape[-1] != size:
            if images.shape[0] == 0:
                images = images.new_zeros(0, images.shape[1], size, size)
            else:
                images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=False)
        return normalize(images, self.mean, self.std).contiguous(memory_format=self.memory_format)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        batches = self._batches(epoch, start)
        empty_tail = bool(batches) and not batches[-1]  # a late rank's share of a short last batch
        loader = DataLoader(
            self._views,
            batch_sampler=batches[:-1] if empty_tail else batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=partial(_seed_worker, self.seed, epoch) if self.workers else None,
            generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)),
        )
        for b, (images, labels) in enumerate(_one_line_errors(loader), start):
            images = images.to(self.device, non_blocking=True)
            yield (
                self._finish(images, self.resolution_at(epoch, b)),
                labels.to(self.device, non_blocking=True),
            )
        if empty_tail:
            side = self._views.size
            images = torch.zeros(0, 3, side, side, dtype=torch.uint8, device=self.device)
            labels = torch.zeros(0, dtype=torch.int64, device=self.device)
            yield self._finish(images, self.resolution_at(epoch, len(self) - 1)), labels
