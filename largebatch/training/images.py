"""ImageNet-style JPEG data: the paper's augmentation, decoded fast, from a class folder or prepared shards.

Two sources hold the same thing, the encoded bytes and label of every example:
- `FolderSource`: DIR/train/<class>/<image> and DIR/val/<class>/<image>, the usual ImageNet layout, listed
  once at start (classes numbered in sorted folder order, as torchvision's ImageFolder and HF's
  `imagefolder` number them);
- `ShardSource`: what `largebatch prepare-imagenet` writes: Arrow files of images re-encoded at shorter
  side <= 256, memory-mapped by HF datasets, so a run opens a few hundred files instead of 1.28M and
  decodes about half the pixels of the originals.

Augmentation is the paper's (its section 5.1, after fb.resnet.torch): a random resized crop of scale
(0.08, 1) and aspect (3/4, 4/3) to 224 x 224, a horizontal flip with p = 1/2 and per-channel mean/std
normalization; evaluation resizes the shorter side to 256 and keeps the centre 224. timm's default
training transform adds colour jitter (0.4), which the paper does not use, and which cost a quarter of
the pipeline's time here: it is left out. The crop and flip of example i in epoch e are drawn from
augment.example_hash(seed, e, i), whichever device or loader worker decodes it.

Decoding is libjpeg-turbo (torchvision.io), then one antialiased bilinear resize of the crop on uint8
(torchvision's `resized_crop`): 1.8x the images/s per core of PIL's decode, crop and resize through
timm here (benchmarks/input_pipeline.py).
Batches leave the loader as uint8 crops and become normalized floats on the training device
(`ImageBatch.to`); with --decode gpu the loader only reads bytes, and the training device decodes them
(nvJPEG through torchvision.io.decode_jpeg).
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .augment import example_hash

IMAGENET_HOWTO = ("pass --data-dir DIR with DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG, or a folder "
                  "written by `largebatch prepare-imagenet`")
MANIFEST = "largebatch-imagenet.json"  # marks a folder written by `largebatch prepare-imagenet`, written last
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EVAL_CROP = 0.875  # evaluation keeps the centre 224 of the image resized to shorter side 256
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def train_view(h: int, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, height, width, flip) of an example's random resized crop and flip, drawn from its hash `h`
    by timm's RandomResizedCropAndInterpolation.get_params: 10 tries, else the centre crop within `ratio`."""
    rng = random.Random(int(h))
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target, aspect = area * rng.uniform(*scale), math.exp(rng.uniform(*log_ratio))
        w, hh = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if w <= width and hh <= height:
            return rng.randint(0, height - hh), rng.randint(0, width - w), hh, w, rng.random() < 0.5
    w, hh = width, height
    if width / height < ratio[0]:
        hh = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (height - hh) // 2, (width - w) // 2, hh, w, rng.random() < 0.5


def eval_view(width: int, height: int):
    """(top, left, height, width, flip) of the centre crop that resize-to-256-then-crop-224 keeps."""
    side = round(min(width, height) * EVAL_CROP)
    return (height - side) // 2, (width - side) // 2, side, side, False


def crop(image: torch.Tensor, view, size: int) -> torch.Tensor:
    """The view (top, left, height, width, flip) of a uint8 (3, H, W) image, resized to size x size."""
    top, left, h, w, flip = view
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return out.flip(-1) if flip else out


class ImageBatch:
    """A batch on its way to the training device: JPEG bytes with each example's augmentation seed (None:
    evaluation's centre crop), or, once decoded, its uint8 crops.

    `.to(device)` finishes it there: decodes and crops what is still encoded (nvJPEG on a CUDA device),
    then converts to float and normalizes. So the engine's `x.to(device)` is where a GPU decodes with
    --decode gpu, and with --decode cpu only uint8 crops, a quarter of float32's bytes, cross from the
    loader workers and over PCIe.
    """

    def __init__(self, blobs: list[torch.Tensor], hashes: list[int] | None, size: int, names: list[str]):
        self.blobs, self.hashes, self.size, self.names = blobs, hashes, size, names
        self.pixels: torch.Tensor | None = None

    def decode(self, device="cpu") -> "ImageBatch":
        """Decode and crop on `device`, in place; the bytes are dropped."""
        device = torch.device(device)
        images = self._decode(device)
        views = [train_view(h, im.shape[2], im.shape[1]) for h, im in zip(self.hashes, images)] if self.hashes \
            else [eval_view(im.shape[2], im.shape[1]) for im in images]
        self.pixels = torch.stack([crop(im, v, self.size) for im, v in zip(images, views)])
        self.blobs = None
        return self

    def to(self, device, non_blocking: bool = False) -> torch.Tensor:
        if self.pixels is None:
            self.decode(device)
        x = self.pixels.to(device, non_blocking=non_blocking).float()
        mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
        return x.sub_(mean).div_(std)  # in place: a fresh batch-sized buffer costs as much as the arithmetic

    def pin_memory(self) -> "ImageBatch":  # the DataLoader pins what it yields (bytes need no pinning)
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self

    def _decode(self, device: torch.device) -> list[torch.Tensor]:
        if device.type == "cuda":
            try:  # one batched nvJPEG call; a PNG or CMYK file among them sends the batch to the per-image path
                return decode_jpeg(self.blobs, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                pass
        return [self._decode_one(blob, name).to(device) for blob, name in zip(self.blobs, self.names)]

    @staticmethod
    def _decode_one(blob: torch.Tensor, name: str) -> torch.Tensor:
        try:
            return decode_image(blob, mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise UserError(f"cannot decode {name} ({_reason(e)}); replace or remove the file") from None


def _reason(e: RuntimeError) -> str:
    """torchvision's message without the C++ location it starts with ("decode_jpeg, /path/decode_jpeg.cpp:171, ")."""
    return re.sub(r"^\w+, \S+:\d+, ", "", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _read(name: str) -> torch.Tensor:
    try:
        return read_file(name)
    except RuntimeError as e:  # torchvision's type for an empty, vanished or unreadable file
        raise UserError(f"cannot read {name} ({_reason(e)}); replace or remove the file") from None


class FolderSource:
    """A split as DIR/<class>/<image>; classes numbered by their position in `classes`."""

    def __init__(self, folder: Path, classes: list[str]):
        present = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise UserError(f"{folder} has class folders the training set lacks ({', '.join(unknown[:3])}); "
                            f"train/ and val/ must have the same classes")
        files, labels, empty = [], [], []
        for label, name in enumerate(classes):
            if name in present:
                found = sorted(e.name for e in os.scandir(folder / name)
                               if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
                files += [f"{name}/{f}" for f in found]
                labels += [label] * len(found)
                empty += [] if found else [name]
        if not files:
            raise UserError(f"{folder} holds no images; {IMAGENET_HOWTO}")
        if empty and folder.name == "train":  # a class never trained would still take one of the model's outputs
            raise UserError(f"{folder / empty[0]} holds no images ({len(empty)} empty class folder(s) in all; images "
                            f"end in {', '.join(IMAGE_SUFFIXES)}); add its images, or remove the folder to train "
                            f"without that class")
        self.folder, self.classes = folder, classes
        # One bytes array, not 1.28M Python strings: loader workers share it without copying pages.
        self.files = np.array(files, dtype=np.bytes_)
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return str(self.folder / self.files[i].decode())

    def read(self, indices: list[int]) -> list[torch.Tensor]:
        return [_read(self.name(i)) for i in indices]


class ShardSource:
    """A split written by `largebatch prepare-imagenet`: Arrow files of (jpeg, label), memory-mapped."""

    def __init__(self, folder: Path, files: list[str]):
        import datasets
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder / missing[0]} is missing ({len(missing)} shards in all); rerun "
                            f"`largebatch prepare-imagenet` to finish the copy")
        self.folder = folder
        self.table = datasets.concatenate_datasets([datasets.Dataset.from_file(str(folder / f)) for f in files]).data
        self.labels = torch.from_numpy(self.table.column("label").to_numpy().astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return f"example {i} of {self.folder}"

    def read(self, indices: list[int]) -> list[torch.Tensor]:
        jpegs = self.table.fast_gather(indices).column("jpeg").to_pylist()
        return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]


class JpegImages:
    """Train/val JPEGs behind the engine's data interface (see data.py), decoded with the paper's augmentation."""

    in_chans = 3

    def __init__(self, train, test, num_classes: int, img_size: int = 224, decode: str = "cpu"):
        self.train, self.test, self.num_classes, self.img_size, self.decode = train, test, num_classes, img_size, decode

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_test(self) -> int:
        return len(self.test)

    def train_batch(self, indices: torch.Tensor, seed: int, epoch: int | torch.Tensor):
        hashes = [int(h) for h in example_hash(seed, epoch, indices)]
        return self._images(self.train, indices, hashes), self.train.labels[indices]

    def test_batch(self, indices: torch.Tensor):
        return self._images(self.test, indices, None), self.test.labels[indices]

    def _images(self, source, indices: torch.Tensor, hashes):
        ids = indices.tolist()
        batch = ImageBatch(source.read(ids), hashes, self.img_size, [source.name(i) for i in ids])
        return batch if self.decode == "gpu" else batch.decode("cpu")


def load_imagenet(data_dir: str, decode: str = "cpu", img_size: int = 224) -> JpegImages:
    """ImageNet from a folder of train/ and val/ class folders, or from one `largebatch prepare-imagenet` wrote."""
    folder = Path(data_dir)
    if decode == "gpu" and not torch.cuda.is_available():
        raise UserError("--decode gpu needs a CUDA device; use --decode cpu (the default)")
    if data_dir and (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text())
        train, test = (ShardSource(folder / split, manifest["splits"][split]["files"]) for split in ("train", "val"))
        return JpegImages(train, test, len(manifest["classes"]), img_size, decode)
    if not data_dir or not (folder / "train").is_dir() or not (folder / "val").is_dir():
        raise UserError(f"ImageNet folder {data_dir or '(none given)'} lacks train/ and val/; {IMAGENET_HOWTO}")
    classes = sorted(e.name for e in os.scandir(folder / "train") if e.is_dir())
    return JpegImages(FolderSource(folder / "train", classes), FolderSource(folder / "val", classes), len(classes),
                      img_size, decode)
