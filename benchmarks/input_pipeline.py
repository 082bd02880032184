"""The ImageNet input pipeline in images/s per CPU core: each path the project offers against a bare
torchvision ImageFolder with the same augmentation, on JPEGs this script writes.

    .venv/bin/python benchmarks/input_pipeline.py                 # 2000 JPEGs, 512 examples a path, ~3 min
    .venv/bin/python benchmarks/input_pipeline.py --tiny          # a smoke run (CI)

The JPEGs are ImageNet-like: the common sizes of its photos (500 x 375 and the like), quality 90, and
a texture with detail at every scale, so they decode about as slowly as photos of the same size do.
One core: one thread, no loader workers, so images/s here is per core, and a loader with W workers
on W free cores does about W times as many. Every path decodes the same examples in the same micro-
batches of 32, one batch of each path in turn, and the headline is the median over batches of each
path's speed over torchvision's in the same round (this VM's speed drifts by ±15% over seconds).
Prints a Markdown table and, last, one JSON line.
"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZES = [(500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (400, 300), (500, 500), (333, 500)]


def photo(rng, w: int, h: int) -> Image.Image:
    """Noise octaves from coarse to fine plus grain: a JPEG with a photo's share of high frequencies."""
    img = np.zeros((h, w, 3), np.float32)
    for k, cells in enumerate([4, 16, 64, 256]):
        small = rng.normal(0, 1, (max(2, h * cells // 512), max(2, w * cells // 512), 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)
        img += np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 1.5 ** k
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * 230 + rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_jpegs(root: Path, count: int, classes: int = 10) -> Path:
    """root/train and root/val in ImageNet's layout (val a quarter of train); kept for the next run."""
    done = root / "complete"
    if done.is_file() and done.read_text() == str(count):
        return root
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(classes, count // 4))):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            photo(rng, *SIZES[i % len(SIZES)]).save(folder / f"{split}_{i:06d}.JPEG", quality=90)
    done.write_text(str(count))
    return root


def torchvision_batches(folder: Path, transform):
    """A bare torchvision ImageFolder: `indices` -> (images, labels), the way its DataLoader collates them."""
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(str(folder), transform=transform)

    def batch(indices, seed, epoch):
        items = [ds[i] for i in indices.tolist()]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    return batch


def measure(paths: dict, num_images: int, examples: int, batch: int, seed: int = 0) -> dict:
    """Paired images/s of every path over the same micro-batches; `torchvision` is the reference."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[:examples]
    times = {name: [] for name in paths}
    for name, fn in paths.items():  # warm up: first file opens, lazy imports
        fn(order[:2], seed, 0)
    for indices in order.split(batch):
        for name, fn in paths.items():
            start = time.perf_counter()
            x = fn(indices, seed, 0)[0].to("cpu")  # ours leave the loader as uint8: normalized here, as on a device
            assert x.shape[1:] == (3, 224, 224), (name, x.shape)
            times[name].append(len(indices) / (time.perf_counter() - start))
    ref = times["torchvision"]
    return {name: dict(images_per_s=len(order) / sum(len(i) / s for i, s in zip(order.split(batch), t)),
                       ratio=statistics.median(a / b for a, b in zip(t, ref)))
            for name, t in times.items()}


def main() -> None:
    from timm.data import create_transform

    from largebatch.tools.prepare import prepare_imagenet
    from largebatch.training.images import load_imagenet

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000, help="training JPEGs to write")
    p.add_argument("--examples", type=int, default=512, help="training examples each path decodes")
    p.add_argument("--data", default="runs/bench/imagenet-jpegs", help="where the JPEGs (and their copy) go")
    p.add_argument("--tiny", action="store_true", help="40 images, 64 examples: a smoke run")
    args = p.parse_args()
    if args.tiny:
        args.images, args.examples = 40, 32
    torch.set_num_threads(1)
    root = write_jpegs(Path(args.data), args.images)
    shutil.rmtree(root.parent / (root.name + "-prepared"), ignore_errors=True)  # time a whole copy
    start = time.perf_counter()
    prepare_imagenet(str(root), str(root.parent / (root.name + "-prepared")), jobs=1)
    prepare_rate = args.images * 1.25 / (time.perf_counter() - start)
    folder, prepared = load_imagenet(str(root)), load_imagenet(str(root.parent / (root.name + "-prepared")))
    paper = create_transform(224, is_training=True, color_jitter=None)  # crop, flip, normalize: ours
    paths = {"torchvision": torchvision_batches(root / "train", paper),
             "torchvision + timm's colour jitter": torchvision_batches(root / "train", create_transform(224, True)),
             "largebatch, JPEG folder": folder.train_batch,
             "largebatch, prepared shards": prepared.train_batch}
    results = measure(paths, args.images, args.examples, 32)
    mb = sum(f.stat().st_size for f in (root / "train").rglob("*.JPEG")) / args.images / 1024
    lines = [f"{args.images} JPEGs of ImageNet-like sizes, quality 90, {mb:.0f} KB on average; {args.examples} "
             f"training examples per path, micro-batches of 32, 1 thread", "",
             "| path | images/s per core | / torchvision (median of paired batches) |", "|---|---|---|"]
    lines += [f"| {name} | {r['images_per_s']:.0f} | **{r['ratio']:.2f}** |" for name, r in results.items()]
    lines += ["", f"`largebatch prepare-imagenet` (1 process): {prepare_rate:.0f} images/s per core"]
    print("\n".join(lines))
    print(json.dumps(dict(paths=results, prepare_images_per_s=prepare_rate, images=args.images,
                          examples=args.examples, mean_kb=mb)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
