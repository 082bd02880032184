"""The ImageNet input pipeline on small JPEG folders the tests write: augmentation, sources, prepared shards."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from largebatch.errors import UserError
from largebatch.tools.prepare import prepare_imagenet
from largebatch.training.augment import example_hash
from largebatch.training.images import (MANIFEST, ImageBatch, FolderSource, ShardSource, crop, eval_view,
                                        load_imagenet, train_view)

CLASSES = ("n01440764", "n01443537")


def smooth_image(rng, w, h) -> Image.Image:
    """A photo-like image (smooth, so resampling filters agree to within a few levels)."""
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """DIR/train and DIR/val with two classes, as ImageNet has them: JPEGs of several sizes, one of them
    grayscale and one a PNG under a .JPEG name (ImageNet's train set holds both kinds)."""
    root, rng = tmp_path_factory.mktemp("imagenet"), np.random.default_rng(0)
    for split, n in (("train", 5), ("val", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                im = smooth_image(rng, *[(120, 90), (90, 120), (200, 64)][i % 3])
                path = root / split / c / f"{c}_{i}.JPEG"
                if split == "train" and c == CLASSES[1] and i == 3:
                    im.convert("L").save(path, format="JPEG", quality=95)
                elif split == "train" and c == CLASSES[1] and i == 4:
                    im.save(path, format="PNG")
                else:
                    im.save(path, format="JPEG", quality=95)
    return root


def test_train_view_is_timms_random_resized_crop(imagenet):
    # The same draws as timm's RandomResizedCropAndInterpolation.get_params seeded with the example's hash.
    from timm.data.transforms import RandomResizedCropAndInterpolation
    hashes = example_hash(3, 1, torch.arange(500))
    for h, (w, hh) in zip(hashes, [(120, 90), (40, 300), (500, 375), (300, 20)] * 125):
        random.seed(int(h))
        expected = RandomResizedCropAndInterpolation.get_params(Image.new("RGB", (w, hh)), (0.08, 1.0), (3 / 4, 4 / 3))
        assert train_view(h, w, hh)[:4] == expected
    flips = [train_view(h, 120, 90)[4] for h in hashes]
    assert 200 < sum(flips) < 300  # p = 1/2


def test_crop_matches_pil_resize_of_the_same_box():
    # The resize is torchvision's antialiased bilinear on uint8; PIL's (timm's) on the same box agrees to
    # within a few grey levels on a smooth image, up and down.
    rng = np.random.default_rng(1)
    im = smooth_image(rng, 160, 120)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    for view in [(10, 20, 90, 100, False), (0, 0, 120, 160, True), (30, 40, 20, 24, False)]:
        top, left, h, w, flip = view
        ref = im.resize((32, 32), Image.BILINEAR, box=(left, top, left + w, top + h))
        ref = torch.from_numpy(np.array(ref.transpose(Image.FLIP_LEFT_RIGHT) if flip else ref)).permute(2, 0, 1)
        assert (crop(x, view, 32).int() - ref.int()).abs().float().mean() < 2.5


def test_eval_view_is_resize_256_centre_224():
    from timm.data import create_transform
    rng = np.random.default_rng(2)
    im = smooth_image(rng, 500, 375)
    ref = create_transform(224, is_training=False)(im)  # normalized float
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    got = crop(x, eval_view(500, 375), 224).float()
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    ref_levels = (ref * std + mean) * 255
    assert (got - ref_levels).abs().mean() < 2.5


def test_folder_layout(imagenet):
    data = load_imagenet(str(imagenet), img_size=32)
    assert (data.num_train, data.num_test, data.num_classes) == (10, 4, 2)
    assert data.train.labels.tolist() == [0] * 5 + [1] * 5  # classes in sorted folder order
    idx = torch.tensor([0, 8, 9, 4])  # 8 is grayscale, 9 a PNG
    batch, y = data.train_batch(idx, seed=0, epoch=0)
    assert batch.pixels.dtype == torch.uint8 and batch.blobs is None  # decoded in the loader, still bytes-sized
    x = batch.to("cpu")
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == [0, 1, 1, 0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x, (batch.pixels.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1), atol=1e-5)
    # Split invariance: an example's crop and flip depend on (seed, epoch, index), not on its batch.
    assert torch.equal(batch.pixels[1:3], data.train_batch(idx[1:3], seed=0, epoch=0)[0].pixels)
    assert not torch.equal(batch.pixels, data.train_batch(idx, seed=0, epoch=1)[0].pixels)
    assert torch.equal(batch.pixels, data.train_batch(idx, seed=0, epoch=torch.tensor([0, 0, 0, 0]))[0].pixels)
    xt, yt = data.test_batch(torch.arange(4))
    assert xt.pixels.shape == (4, 3, 32, 32) and yt.tolist() == [0, 0, 1, 1]
    assert torch.equal(xt.pixels[2:], data.test_batch(torch.arange(2, 4))[0].pixels)


def test_gpu_decode_defers_to_the_device(imagenet, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--decode gpu needs a CUDA device"):
            load_imagenet(str(imagenet), decode="gpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what the loader yields, without a GPU
    data = load_imagenet(str(imagenet), decode="gpu", img_size=32)
    cpu = load_imagenet(str(imagenet), img_size=32)
    idx = torch.tensor([1, 8, 9])
    batch, y = data.train_batch(idx, seed=4, epoch=2)
    assert batch.pixels is None and len(batch.blobs) == 3  # still bytes in the loader
    expected = cpu.train_batch(idx, seed=4, epoch=2)[0].to("cpu")
    assert torch.equal(batch.to("cpu"), expected)  # the same function of the bytes, wherever it runs
    if torch.cuda.is_available() and torch.cuda.device_count():
        # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a few levels
        on_gpu = data.train_batch(idx, seed=4, epoch=2)[0].to("cuda")  # decoded by nvJPEG
        assert (on_gpu.cpu() - expected).abs().mean() < 0.05


def test_bad_folders_and_files_are_one_line(imagenet, tmp_path):
    with pytest.raises(UserError, match="lacks train/ and val/"):
        load_imagenet(str(tmp_path / "nowhere"))
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "val").mkdir(parents=True)
    with pytest.raises(UserError, match="train holds no images"):
        load_imagenet(str(tmp_path / "bad"))
    (tmp_path / "bad" / "train" / "a" / "x.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "bad" / "val" / "b").mkdir()
    with pytest.raises(UserError, match="class folders the training set lacks"):
        load_imagenet(str(tmp_path / "bad"))
    (tmp_path / "bad" / "val" / "b").rename(tmp_path / "bad" / "val" / "a")
    (tmp_path / "bad" / "val" / "a" / "y.JPEG").write_bytes(b"")
    (tmp_path / "bad" / "train" / "c").mkdir()  # a class whose images were not copied
    with pytest.raises(UserError, match=r"train/c holds no images \(1 empty class folder\(s\) in all; .*remove the "
                                        r"folder to train without that class"):
        load_imagenet(str(tmp_path / "bad"))
    (tmp_path / "bad" / "train" / "c").rmdir()
    (tmp_path / "bad" / "train" / "a" / "z.JPEG").write_bytes(b"")  # a copy cut off before its first byte
    data = load_imagenet(str(tmp_path / "bad"))
    with pytest.raises(UserError) as e:
        data.train_batch(torch.tensor([0]), seed=0, epoch=0)
    assert str(e.value) == (f"cannot decode {tmp_path}/bad/train/a/x.JPEG (Unsupported image file. Only jpeg, png, "
                            f"webp and gif are currently supported. For avif and heic format, please rely on "
                            f"`decode_avif` and `decode_heic` directly.); replace or remove the file")
    with pytest.raises(UserError) as e:
        data.train_batch(torch.tensor([1]), seed=0, epoch=0)
    assert str(e.value) == (f"cannot read {tmp_path}/bad/train/a/z.JPEG (Expected a non empty file); replace or "
                            f"remove the file")


def test_a_bad_image_in_a_loader_worker_is_its_own_line(imagenet, tmp_path):
    """The ImageNet recipe decodes in --workers processes: the error is the worker's own line, not torch's
    "Caught UserError in DataLoader worker process 0." with the worker's traceback folded into it."""
    import functools
    import shutil

    from largebatch.training.engine import _train_batch
    from largebatch.training.sharding import stream_loader

    shutil.copytree(imagenet, tmp_path / "copy")
    bad = tmp_path / "copy/train" / CLASSES[0] / f"{CLASSES[0]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    data = load_imagenet(str(tmp_path / "copy"), img_size=32)
    loader = stream_loader(functools.partial(_train_batch, data, 0), data.num_train, 10, 0, 0, 1, 1, 0, 1, workers=2)
    with pytest.raises(UserError) as e:
        list(loader)
    assert str(e.value) == f"cannot decode {bad} (Image is incomplete or truncated); replace or remove the file"


def test_prepared_shards(imagenet, tmp_path, monkeypatch):
    import largebatch.tools.prepare as prepare
    monkeypatch.setattr(prepare, "SHARD", 4)  # 10 training images: shards of 4, 4 and 2
    out = tmp_path / "prepared"
    line = prepare_imagenet(str(imagenet), str(out), short_side=64, jobs=1)
    assert "wrote 10 training and 4 validation images" in line and (out / MANIFEST).is_file()
    shards = sorted((out / "train").glob("*.arrow"))
    assert len(shards) == 3 and not list(out.rglob("*.tmp"))
    folder, data = load_imagenet(str(imagenet), img_size=32), load_imagenet(str(out), img_size=32)
    assert isinstance(data.train, ShardSource) and isinstance(folder.train, FolderSource)
    assert torch.equal(data.train.labels, folder.train.labels) and torch.equal(data.test.labels, folder.test.labels)
    # Stored at shorter side 64 (never enlarged): the 200 x 64 images stay as they were.
    from torchvision.io import decode_image
    sizes = {tuple(decode_image(b).shape[1:]) for b in data.train.read(list(range(10)))}
    assert sizes == {(64, 85), (85, 64), (64, 200)}
    # Evaluation sees the same centre of the same scene, up to resampling (a training crop is drawn in the
    # stored image's pixels, so it is another draw of the same distribution).
    centre, original = (d.test_batch(torch.arange(4))[0].to("cpu") for d in (data, folder))
    assert (centre - original).abs().mean() < 0.05
    idx = torch.arange(10)
    a = data.train_batch(idx, seed=1, epoch=0)[0].pixels
    # A killed copy resumes: a missing shard is written again, the others are kept as they are.
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    (out / MANIFEST).unlink()
    with pytest.raises(UserError, match="missing"):
        ShardSource(out / "train", [s.name for s in shards])
    prepare_imagenet(str(imagenet), str(out), short_side=64, jobs=1)
    assert shards[1].is_file() and shards[0].stat().st_mtime_ns == kept
    assert torch.equal(load_imagenet(str(out), img_size=32).train_batch(idx, seed=1, epoch=0)[0].pixels, a)
    with pytest.raises(UserError, match="already a prepared copy"):
        prepare_imagenet(str(out), str(tmp_path / "again"))


def test_prepare_names_every_unreadable_image_in_one_pass(imagenet, tmp_path, monkeypatch):
    import shutil

    import largebatch.tools.prepare as prepare
    monkeypatch.setattr(prepare, "SHARD", 4)
    src = tmp_path / "copy"
    shutil.copytree(imagenet, src)
    bad = [src / "train" / CLASSES[0] / f"{CLASSES[0]}_1.JPEG", src / "train" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG",
           src / "val" / CLASSES[1] / f"{CLASSES[1]}_1.JPEG"]
    for path in bad:
        path.write_bytes(b"not an image")
    out = tmp_path / "prepared"
    with pytest.raises(UserError) as e:
        prepare_imagenet(str(src), str(out), short_side=64, jobs=1)
    assert str(e.value).startswith(f"3 image(s) cannot be read: {', '.join(map(str, sorted(bad)))} (each with its "
                                   f"reason in {out / 'unreadable.txt'}); replace or remove them and rerun"), e.value
    assert len((out / "unreadable.txt").read_text().splitlines()) == 3
    assert [p.name for p in sorted((out / "train").iterdir())] == ["train-00002-of-00003.arrow"]  # the good shard
    for path in bad:
        path.unlink()
    assert "wrote 8 training and 3 validation images" in prepare_imagenet(str(src), str(out), short_side=64, jobs=1)
    assert not (out / "unreadable.txt").exists() and not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_prepare_workers_die_with_a_killed_copy(imagenet, tmp_path):
    """SIGKILL to `largebatch prepare-imagenet` (nothing to forward): its pool workers go with it."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = ("import sys, time\nimport largebatch.tools.prepare as prepare\n"
              "def slow(job):\n    time.sleep(120)\n"
              "prepare._write_shard = slow\nprepare.prepare_imagenet(sys.argv[1], sys.argv[2], jobs=2)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(imagenet), str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(psutil.Process(proc.pid).children()) < 2 and time.time() < deadline:
        time.sleep(0.1)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, f"pool workers outlived the killed copy: {alive}"
