"""Batched augmentation as torch ops on whatever device the batch lives on.

Images are [N, C, H, W]; uint8 means pixel values 0..255, floating point means 0..1. Random numbers are
drawn from `generator` (on its own device, CPU by default), so a seed gives the same crops on CPU and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from onceforall.errors import DataError

Range = tuple[float, float]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """float32 images in 0..1 (uint8 is divided by 255)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def _rand(n: int, generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, *shape, generator=generator, device=device).cpu()


def _check_range(name: str, bounds: Range) -> None:
    lo, hi = bounds
    if not 0 < lo <= hi:
        raise DataError(f"{name}={bounds} is not a range; pass (low, high) with 0 < low <= high")


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Range = (0.08, 1.0),
    ratio: Range = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> torch.Tensor:
    """Inception-style random crop boxes: float [n, 4] of whole-pixel (top, left, h, w) on the CPU.

    Each box covers a `scale` fraction of the image with aspect ratio (w/h) log-uniform in `ratio`; of
    `tries` candidates the first that fits is kept, and when none fits the whole image is used with its
    aspect ratio clamped into `ratio`.
    """
    _check_range("scale", scale)
    _check_range("ratio", ratio)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * _rand(n, generator, tries))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand(n, generator, tries))
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    fallback_w, fallback_h = float(width), float(height)
    if width / height < ratio[0]:
        fallback_h = float(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fallback_w = float(round(height * ratio[1]))
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))

    offsets = _rand(n, generator, 2)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its (top, left, h, w) box and resize it to size x size: float32 [N, C, size, size].

    One batched bilinear `grid_sample` (align_corners=False, border padding), which matches
    `F.interpolate(mode="bilinear", align_corners=False)` of the box; no antialiasing.
    """
    if images.ndim != 4 or boxes.shape != (images.shape[0], 4):
        raise DataError(
            f"need images [N, C, H, W] and boxes [N, 4], got {tuple(images.shape)}, {tuple(boxes.shape)}"
        )
    n, c, height, width = images.shape
    if n == 0:  # a DDP rank's share of a short last batch
        return images.new_zeros(0, c, size, size, dtype=torch.float32)
    top, left, h, w = boxes.to(images.device, torch.float32).unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(to_float(images), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: Range = (0.08, 1.0),
    ratio: Range = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop of each image (see `crop_boxes`) resized to size x size: float32 [N, C, size, size]."""
    n, _, height, width = images.shape
    return resized_crop(images, crop_boxes(n, height, width, scale, ratio, generator), size)


def flip_mask(n: int, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool [n] on the CPU: which images to flip, each with probability p."""
    return _rand(n, generator) < p


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where `mask` [N] is True; the dtype is kept."""
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def random_flip(
    images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right with probability p; the dtype is kept."""
    return hflip(images, flip_mask(images.shape[0], p, generator))


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 (image - mean) / std per channel, on the 0..1 scale."""
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise DataError(
            f"mean {tuple(mean)} / std {tuple(std)} do not fit {channels} channels; pass one per channel"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (to_float(images) - mean_t) / std_t


def center_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Eval view: the central square of each image resized to size x size (bilinear): float32."""
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = to_float(images[..., top : top + side, left : left + side])
    if side == size:
        return square
    return F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)
