"""Augmentation on uint8 tensors whose randomness is a function of (seed, epoch, example index).

A per-example counter-based hash instead of a stateful RNG: the same example gets the same crop and
flip in an epoch whichever device and accumulation step it lands on, which is what makes a run on
one device with accumulation the same experiment as a run on many.
"""
from __future__ import annotations

import numpy as np
import torch


def example_hash(seed: int, epoch: int | torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    """64-bit SplitMix64 finalizer of (seed, epoch, index): uniform bits, one word per example. `epoch` is
    one number, or one per example (a step can span two epochs)."""
    epoch = np.asarray(epoch.numpy() if isinstance(epoch, torch.Tensor) else epoch).astype(np.uint64)
    with np.errstate(over="ignore"):  # the hash relies on uint64 wrap-around
        x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + epoch * np.uint64(0xD1B54A32D192ED03)
             + indices.numpy().astype(np.uint64))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def crop_flip(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int | torch.Tensor, pad: int,
              flip: bool) -> torch.Tensor:
    """Random crop after zero padding by `pad`, and random horizontal flip, of a (N, C, H, W) batch."""
    h = example_hash(seed, epoch, indices)
    N, C, H, W = images.shape
    out = images
    if pad:
        span = np.uint64(2 * pad + 1)
        dy = torch.from_numpy((h % span).astype(np.int64))
        dx = torch.from_numpy(((h >> np.uint64(16)) % span).astype(np.int64))
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(H))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(W))[:, None, None, :]
        out = padded[torch.arange(N)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    if flip:
        flips = torch.from_numpy(((h >> np.uint64(32)) & np.uint64(1)).astype(bool))
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out
