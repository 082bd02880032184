"""`largebatch prepare-imagenet SRC DST`: a resized copy of an ImageNet folder in Arrow shards, once.

Each image is re-encoded (JPEG, quality 90) at shorter side <= 256, the size evaluation resizes to anyway,
as FFCV's ImageNet recipes store it; images already smaller stay as they are. Shards of 5000 examples
are HF datasets Arrow files (written by its ArrowWriter, read memory-mapped by Dataset.from_file), so a
run opens a few hundred files instead of 1.28M. Each shard is written under a temporary name and renamed
when complete, and the manifest last: a killed copy resumes at its first missing shard, and a run
never reads a half-written one.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from ..training.images import MANIFEST, FolderSource, load_imagenet
from ..training.preempt import die_with_parent

SHARD = 5000


def resized_jpeg(path: str, short_side: int, quality: int) -> bytes:
    """The image at `path` as RGB JPEG bytes, shorter side scaled down to `short_side` (never up)."""
    with Image.open(path) as im:
        w, h = im.size
        scale = min(1.0, short_side / min(w, h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im.draft("RGB", size)  # libjpeg's DCT-domain downscale to no less than `size`: most of the work, free
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def _write_shard(job) -> tuple[int, list[tuple[str, str]]]:
    """(images written, (name, why) of each that could not be read): a shard with unreadable images is not
    written, but read to its end, so that one pass names every bad file."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    source, classes, lo, hi, path, short_side, quality = job
    features = datasets.Features({"jpeg": datasets.Value("binary"), "label": datasets.ClassLabel(names=classes)})
    tmp, bad = path.with_suffix(".tmp"), []
    with ArrowWriter(features=features, path=str(tmp)) as writer:
        for i in range(lo, hi):
            name = source.name(i)
            try:
                jpeg = resized_jpeg(name, short_side, quality)
            except OSError as e:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
                bad.append((name, str(e)))
                continue
            writer.write({"jpeg": jpeg, "label": int(source.labels[i])})
        writer.finalize()
    if bad:
        tmp.unlink()
        return 0, bad
    os.replace(tmp, path)
    return hi - lo, []


def prepare_imagenet(src: str, dst: str, short_side: int = 256, quality: int = 90, jobs: int = 0) -> str:
    """Write the copy; returns a one-line summary. Resumes a copy a killed run left."""
    if not 1 <= quality <= 100 or short_side < 32:
        raise UserError(f"--quality {quality} must be 1-100 and --short-side {short_side} at least 32")
    data = load_imagenet(src)  # checks the layout and lists both splits once
    if not isinstance(data.train, FolderSource):
        raise UserError(f"{src} is already a prepared copy; pass the original ImageNet folder")
    out, classes = Path(dst), data.train.classes
    manifest = dict(classes=classes, short_side=short_side, quality=quality, source=str(Path(src).resolve()),
                    splits={})
    bad = []
    for split, source in (("train", data.train), ("val", data.test)):
        (out / split).mkdir(parents=True, exist_ok=True)
        starts = range(0, len(source), SHARD)
        files = [f"{split}-{k:05d}-of-{len(starts):05d}.arrow" for k in range(len(starts))]
        todo = [(source, classes, lo, min(lo + SHARD, len(source)), out / split / f, short_side, quality)
                for lo, f in zip(starts, files) if not (out / split / f).is_file()]
        # The workers die with this process: a killed copy must not leave them running on.
        pool = multiprocessing.Pool(jobs or os.cpu_count(), initializer=die_with_parent, initargs=(os.getpid(),))
        with pool, tqdm(total=len(source), initial=len(source) - sum(j[3] - j[2] for j in todo), unit="img",
                        desc=split, dynamic_ncols=True) as bar:
            for n, unreadable in pool.imap_unordered(_write_shard, todo):
                bar.update(n)
                bad += unreadable
        manifest["splits"][split] = dict(files=files, examples=len(source))
    listing = out / "unreadable.txt"
    if bad:
        bad.sort()
        listing.write_text("".join(f"{name}: {why}\n" for name, why in bad))
        names = [name for name, _ in bad]
        raise UserError(f"{len(bad)} image(s) cannot be read: {', '.join(names[:5])}{', ...' if len(bad) > 5 else ''} "
                        f"(each with its reason in {listing}); replace or remove them and rerun: the shards "
                        f"already written are kept")
    listing.unlink(missing_ok=True)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return (f"wrote {manifest['splits']['train']['examples']} training and {manifest['splits']['val']['examples']} "
            f"validation images at shorter side <= {short_side} into {out}; train with --data-dir {out}")
