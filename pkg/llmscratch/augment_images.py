"""Augmentations for small images, written with torch only (no torchvision), and a batch iterator over tensors.

Every function takes a float batch ``(B, C, H, W)`` and returns a new batch of the same shape, with an
independent random draw per image (vectorised: no Python loop over images), so it runs on the GPU as well:

- :func:`translate`: shift each image by a given number of pixels (zeros enter at the border);
- :func:`random_shift`: :func:`translate` by random whole-pixel offsets;
- :func:`random_affine`: random rotation, scale and translation (one ``affine_grid`` + ``grid_sample``);
- :func:`random_erasing`: blank a random rectangle in some images (Zhong et al., 2020).

:class:`ImageBatches` serves ``(images, labels)`` batches from tensors held in memory, shuffled each epoch and
optionally augmented; it has ``len()``, so :class:`llmscratch.train.Trainer` can plan a cosine schedule with it.
Chapter 5 trains its Vision Transformer on MNIST with these.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["translate", "random_shift", "random_affine", "random_erasing", "ImageBatches"]


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}; add dimensions with unsqueeze")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}; use images.float() / 255 first")


def _rand(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` uniform numbers in ``[low, high)``, drawn on the CPU (so a CPU generator works for any device)."""
    u = torch.rand(n, generator=generator)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _warp(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample each image through its ``(2, 3)`` affine map (output coordinates -> input coordinates)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2) in [-1, 1]
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def translate(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift image ``i`` right by ``dx[i]`` and down by ``dy[i]`` pixels; zeros enter at the border.

    Whole-pixel shifts are exact (each output pixel reads exactly one input pixel). Shapes: images
    ``(B, C, H, W)``, ``dx`` and ``dy`` ``(B,)``.
    """
    _check_batch(images)
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates where one pixel is 2/W wide; an output pixel reads the input
    # at (x - dx), hence the minus sign.
    theta[:, 0, 2] = -2.0 * torch.as_tensor(dx, dtype=images.dtype, device=images.device) / w
    theta[:, 1, 2] = -2.0 * torch.as_tensor(dy, dtype=images.dtype, device=images.device) / h
    return _warp(images, theta, mode="nearest")


def random_shift(images: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift every image by its own random whole-pixel offset in ``[-max_shift, max_shift]`` along each axis."""
    _check_batch(images)
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int (pixels), got {max_shift!r}")
    b = images.shape[0]
    dx = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)
    dy = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator)
    return translate(images, dx, dy)


def random_affine(images: torch.Tensor, degrees: float = 10.0, translate_frac: float = 0.1,
                  scale: tuple[float, float] = (0.9, 1.1), generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation (``+-degrees``), scaling (``scale`` range) and translation (``+-translate_frac`` of the
    side) per image, about the image centre, with bilinear resampling and zeros outside the image."""
    _check_batch(images)
    if degrees < 0 or not 0 <= translate_frac < 1 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"need degrees >= 0, 0 <= translate_frac < 1 and 0 < scale[0] <= scale[1]; got "
                         f"{degrees}, {translate_frac}, {scale}")
    b = images.shape[0]
    angle = _rand(b, -degrees, degrees, images, generator) * (math.pi / 180)
    s = _rand(b, scale[0], scale[1], images, generator)
    tx = _rand(b, -translate_frac, translate_frac, images, generator) * 2  # [-1, 1] spans the side: x2
    ty = _rand(b, -translate_frac, translate_frac, images, generator) * 2
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s  # the inverse map: output -> input coordinates
    theta = torch.stack([torch.stack([cos, -sin, -tx], -1), torch.stack([sin, cos, -ty], -1)], 1)  # (B, 2, 3)
    return _warp(images, theta)


def random_erasing(images: torch.Tensor, p: float = 0.5, area: tuple[float, float] = (0.02, 0.2),
                   aspect: tuple[float, float] = (0.3, 3.3), value: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per image, set a random rectangle to ``value`` (Zhong et al., 2020).

    The rectangle covers a fraction of the image drawn from ``area`` with an aspect ratio (height / width)
    drawn log-uniformly from ``aspect``, clipped to the image; its position is uniform.
    """
    _check_batch(images)
    if not 0 <= p <= 1 or not 0 < area[0] <= area[1] <= 1 or not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"need 0 <= p <= 1, 0 < area[0] <= area[1] <= 1 and 0 < aspect[0] <= aspect[1]; got "
                         f"p={p}, area={area}, aspect={aspect}")
    b, _, h, w = images.shape
    cpu = torch.empty(0)
    frac = _rand(b, area[0], area[1], cpu, generator)
    ratio = torch.exp(_rand(b, math.log(aspect[0]), math.log(aspect[1]), cpu, generator))
    eh = (frac * h * w * ratio).sqrt().round().clamp(1, h).long()  # (B,) rectangle heights
    ew = (frac * h * w / ratio).sqrt().round().clamp(1, w).long()  # (B,) rectangle widths
    top = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    on = torch.rand(b, generator=generator) < p
    rows = torch.arange(h)[None, :]  # (1, H)
    cols = torch.arange(w)[None, :]  # (1, W)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & on[:, None, None])  # (B, H, W)
    mask = mask[:, None].to(images.device)  # (B, 1, H, W): every channel of the rectangle
    return images.masked_fill(mask, value)


class ImageBatches:
    """Mini-batches ``(images, labels)`` from in-memory tensors, reshuffled every epoch.

    Args:
        images: ``(N, C, H, W)`` float (or ``(N, H, W)``, given a channel dimension); labels: ``(N,)``.
        batch_size: images per batch; the last batch is smaller unless ``drop_last``.
        shuffle: a new order every epoch (from ``seed``: the same sequence of epochs on every run).
        augment: a function ``(B, C, H, W) -> (B, C, H, W)`` applied to every training batch (e.g.
            ``lambda x: random_erasing(random_shift(x, 2))``), or ``None``.
        device: where the batches go (the tensors may stay on the CPU).

    ``len()`` is the number of batches per epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128, shuffle: bool = True,
                 augment=None, drop_last: bool = False, seed: int = 0, device=None):
        if images.dim() == 3:
            images = images[:, None]  # (N, 1, H, W)
        _check_batch(images)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x)
            yield x, y
