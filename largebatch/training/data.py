"""Data sets behind one small interface the engine uses.

Every data set offers `num_train`, `num_test`, `num_classes`, `in_chans`, and
`train_batch(indices, seed, epoch)` / `test_batch(indices)` returning (images, labels) tensors.
Training batches are augmented as a pure function of (seed, epoch, example index); `epoch` is one
number or a tensor of one per example. The data sets held in memory are here; ImageNet-style JPEGs are
in images.py.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .augment import crop_flip

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HOWTO = ("install it with `apt-get install dataset-fashion-mnist` (files land in "
                       f"{FASHION_MNIST_DIR}) or pass --data-dir DIR holding the four IDX files")


class InMemoryImages:
    """A small data set held as uint8 tensors (N, C, H, W); augmentation is crop-with-padding and flip."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 mean: tuple[float, ...], std: tuple[float, ...], pad: int, flip: bool, num_classes: int = 10):
        (self.train_x, self.train_y), (self.test_x, self.test_y) = train, test
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255
        self.pad, self.flip, self.num_classes = pad, flip, num_classes
        self.in_chans = self.train_x.shape[1]

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        return len(self.test_y)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def train_batch(self, indices: torch.Tensor, seed: int, epoch: int | torch.Tensor):
        x = crop_flip(self.train_x[indices], indices, seed, epoch, self.pad, self.flip)
        return self._normalize(x), self.train_y[indices]

    def test_batch(self, indices: torch.Tensor):
        return self._normalize(self.test_x[indices]), self.test_y[indices]


# --- IDX (MNIST-style) files ----------------------------------------------------------------------

def read_idx(path: Path, howto: str = "") -> torch.Tensor:
    """Read a (possibly gzipped) IDX file of unsigned bytes into a uint8 tensor, checking its header."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"missing data file {path}" + (f"; {howto}" if howto else "")) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{path} is a damaged gzip file ({e}); fetch it again"
                            + (f" ({howto})" if howto else "")) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'}, "
                        f"expected 000008xx); point --data-dir at the original files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated inside its header ({len(raw)} bytes); fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise UserError(f"{path} holds {len(raw)} bytes but its header {shape} needs {expected}: "
                        f"the file is truncated or corrupt; fetch it again")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy())


def _idx_pair(folder: Path, prefix: str, howto: str):
    def find(stem):
        for name in (f"{stem}.gz", stem):
            if (folder / name).exists():
                return folder / name
        return folder / f"{stem}.gz"
    images = read_idx(find(f"{prefix}-images-idx3-ubyte"), howto)
    labels_path = find(f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path, howto)
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"{folder}: {prefix} images must be 3-D and labels 1-D IDX arrays, "
                        f"got shapes {tuple(images.shape)} and {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise UserError(f"{labels_path} has {len(labels)} labels for {len(images)} images; "
                        f"the files are from different data sets")
    return images.unsqueeze(1), labels.long()


def load_fashion_mnist(data_dir: str = "") -> InMemoryImages:
    """Fashion-MNIST from the four IDX files (.gz or not), by default Debian's copy."""
    folder = Path(data_dir or FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise UserError(f"Fashion-MNIST folder {folder} does not exist; {FASHION_MNIST_HOWTO}")
    return InMemoryImages(_idx_pair(folder, "train", FASHION_MNIST_HOWTO),
                          _idx_pair(folder, "t10k", FASHION_MNIST_HOWTO),
                          mean=(0.2860,), std=(0.3530,), pad=2, flip=True)


# --- CIFAR-10 (the python pickle batches) ---------------------------------------------------------

CIFAR10_HOWTO = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
                 "extract it and pass --data-dir .../cifar-10-batches-py")


def _cifar_batch(path: Path):
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="bytes")
        data, labels = d[b"data"], d[b"labels"]
    except FileNotFoundError:
        raise UserError(f"missing CIFAR-10 file {path}; {CIFAR10_HOWTO}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}); {CIFAR10_HOWTO}") from None
    images = torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
    if len(images) != len(labels):
        raise UserError(f"{path} has {len(labels)} labels for {len(images)} images")
    return images, torch.tensor(labels, dtype=torch.long)


def load_cifar10(data_dir: str) -> InMemoryImages:
    folder = Path(data_dir)
    if not data_dir or not folder.is_dir():
        raise UserError(f"CIFAR-10 folder {data_dir or '(none given)'} does not exist; {CIFAR10_HOWTO}")
    parts = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return InMemoryImages(train, _cifar_batch(folder / "test_batch"),
                          mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), pad=4, flip=True)
