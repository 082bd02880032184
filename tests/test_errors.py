"""Bad input: one clear line on stderr, exit status 2, no traceback."""
import gzip
import shutil

import pytest

from conftest import ROOT, launch

RECIPE = ROOT / "recipes/fashion_mnist.py"


def _fails(args, *words):
    out = launch(RECIPE, args, check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_indivisible_batch(tmp_path):
    _fails(["--global-batch", 1000, "--micro-batch", 64, "--run-dir", tmp_path], "1000", "64", "1 processes")


def test_micro_batch_not_multiple_of_bn_group():
    _fails(["--global-batch", 256, "--micro-batch", 48], "--micro-batch 48", "--bn-batch 32")


def test_missing_data_dir(tmp_path):
    _fails(["--data-dir", tmp_path / "nowhere"], str(tmp_path / "nowhere"), "dataset-fashion-mnist")


def test_missing_data_file(tmp_path, fmnist_dir):
    for f in fmnist_dir.iterdir():
        shutil.copy(f, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    _fails(["--data-dir", tmp_path], "t10k-labels-idx1-ubyte", "dataset-fashion-mnist")


def test_truncated_idx_file(tmp_path, fmnist_dir):
    for f in fmnist_dir.iterdir():
        shutil.copy(f, tmp_path)
    raw = gzip.decompress((fmnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _fails(["--data-dir", tmp_path], "train-images-idx3-ubyte.gz", "truncated")


def test_unknown_model():
    _fails(["--model", "resnet_does_not_exist"], "resnet_does_not_exist", "timm")


@pytest.mark.parametrize("args,words", [
    (["--global-batch", 0], ["--global-batch 0"]),
    (["--schedule", "linear"], ["--schedule", "linear"]),
    (["--global-batch", 4096, "--warmup-epochs", 5, "--epochs", 3], ["--warmup-epochs 5", "--epochs 3"]),
])
def test_bad_flag_values(args, words):
    _fails(args, *words)


def test_bad_yaml_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("global_batch: 512\nlearning_rate: 3\n")
    _fails(["--config", cfg], "learning_rate", "unknown option")


def test_sync_bn_across_cpu_processes(tmp_path):
    out = launch(RECIPE, ["--global-batch", 256, "--micro-batch", 128, "--subset", 1024, "--epochs", 1,
                          "--bn", "sync", "--run-dir", tmp_path], nproc=2, check=False)
    assert out.returncode != 0
    assert "error: --bn sync needs GPUs" in out.stderr and "--bn ghost" in out.stderr
    assert "ValueError" not in out.stderr  # refused before torch's SyncBatchNorm fails deep inside
