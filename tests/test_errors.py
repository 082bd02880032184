"""Bad input: one clear line on stderr, exit status 2, no traceback."""
import gzip
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, launch

from largebatch.training.config import Config
from largebatch.training.recipes import run_recipe
from largebatch.errors import UserError
from largebatch.training.runfolder import RunFolder

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


def _fails_in_process(args, capsys, *words):
    """`_fails` for what is refused while the options are parsed: the recipe run in this process."""
    with pytest.raises(SystemExit) as exit:
        run_recipe("fashion_mnist", [str(a) for a in args])
    err = capsys.readouterr().err
    assert exit.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.slow
def test_indivisible_batch(tmp_path):
    _fails(["--global-batch", 1000, "--micro-batch", 64, "--run-dir", tmp_path], "1000", "64", "1 processes")


def test_micro_batch_not_multiple_of_bn_group(capsys):
    _fails_in_process(["--global-batch", 256, "--micro-batch", 48], capsys, "--micro-batch 48", "--bn-batch 32")


@pytest.mark.slow
def test_missing_data_dir(tmp_path):
    _fails(["--data-dir", tmp_path / "nowhere"], str(tmp_path / "nowhere"), "dataset-fashion-mnist")


@pytest.mark.slow
def test_missing_data_file(tmp_path, fmnist_dir):
    for f in fmnist_dir.iterdir():
        shutil.copy(f, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    _fails(["--data-dir", tmp_path], "t10k-labels-idx1-ubyte", "dataset-fashion-mnist")


@pytest.mark.slow
def test_truncated_idx_file(tmp_path, fmnist_dir):
    for f in fmnist_dir.iterdir():
        shutil.copy(f, tmp_path)
    raw = gzip.decompress((fmnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _fails(["--data-dir", tmp_path], "train-images-idx3-ubyte.gz", "truncated")


@pytest.mark.slow
def test_unknown_model():
    _fails(["--model", "resnet_does_not_exist"], "resnet_does_not_exist", "timm")


@pytest.mark.parametrize("args,words", [
    (["--global-batch", 0], ["--global-batch 0"]),
    (["--schedule", "linear"], ["--schedule", "linear"]),
    (["--global-batch", 4096, "--warmup-epochs", 5, "--epochs", 3], ["--warmup-epochs 5", "--epochs 3"]),
    (["--seed", -1], ["--seed -1", "between 0 and 2**32 - 1"]),
    (["--seed", 10**20], ["--seed 100000000000000000000", "between 0 and 2**32 - 1"]),
    (["--seed", "1e20"], ["--seed", "invalid int value: '1e20'"]),
])
def test_bad_flag_values(args, words, tmp_path, capsys):
    _fails_in_process(args + ["--run-dir", tmp_path / "run"], capsys, *words)
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow
def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    _fails(["--run-dir", tmp_path / "taken"], f"--run-dir {tmp_path / 'taken'} is a file, not a folder")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/sys/fs").is_dir(), reason="needs /sys, a folder nobody may write in, even root")
@pytest.mark.parametrize("run_dir", ["/sys/fs", "/sys/fs/largebatch-run"])  # the folder itself, or its parent
def test_run_dir_that_cannot_be_written(run_dir):
    _fails(["--run-dir", run_dir], f"cannot write in --run-dir {run_dir}", "choose a folder you can write to")


def test_bad_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("global_batch: 512\nlearning_rate: 3\n")
    _fails_in_process(["--config", cfg], capsys, "learning_rate", "unknown option")


@pytest.mark.slow
def test_sync_bn_across_cpu_processes(tmp_path):
    out = launch(RECIPE, ["--global-batch", 256, "--micro-batch", 128, "--subset", 1024, "--epochs", 1,
                          "--bn", "sync", "--run-dir", tmp_path], nproc=2, check=False)
    assert out.returncode != 0
    assert "error: --bn sync needs GPUs" in out.stderr and "--bn ghost" in out.stderr
    assert "ValueError" not in out.stderr  # refused before torch's SyncBatchNorm fails deep inside


@pytest.mark.parametrize("B, micro, W, bn, expected", [
    (4096, 256, 1, "ghost", (256, 16)),
    (4096, 256, 2, "ghost", (256, 8)),
    (64, 256, 1, "ghost", (64, 1)),  # --micro-batch is a cap: a smaller batch runs in one pass
    (128, 256, 2, "ghost", (64, 1)),
    (48, 256, 1, "micro", (48, 1)),
])
def test_batch_split(B, micro, W, bn, expected):
    cfg = Config(global_batch=B, micro_batch=micro, bn=bn).validate()
    assert cfg.split(W) == expected
    assert expected[0] * W * expected[1] == B


@pytest.mark.parametrize("B, micro, W, words", [
    (48, 256, 1, ["48 examples per device", "--bn-batch 32", "multiple of 32"]),
    (96, 256, 2, ["48 examples per device", "multiple of 64"]),
    (1000, 256, 1, ["--global-batch 1000 is not divisible by --micro-batch 256 x 1 processes"]),
])
def test_batch_split_refused(B, micro, W, words):
    with pytest.raises(UserError) as e:
        Config(global_batch=B, micro_batch=micro).validate().split(W)
    for w in words:
        assert w in str(e.value), str(e.value)


def _exportable_run(folder: Path) -> Path:
    """A run folder with one verified checkpoint of an untrained resnet_fmnist, as `largebatch export` reads it."""
    import json

    import timm
    from safetensors.torch import save_file

    from largebatch.training import checkpoint, models  # noqa: F401  (registers resnet_fmnist)

    step = RunFolder(folder).checkpoints / "step_00000001"
    step.mkdir(parents=True)
    save_file(timm.create_model("resnet_fmnist", num_classes=10, in_chans=1).state_dict(), step / "model.safetensors")
    (step / checkpoint.LOG).write_text("")
    (step / checkpoint.PROGRESS).write_text(json.dumps(dict(files=checkpoint._manifest(step))))
    RunFolder(folder).config.write_text(json.dumps(dict(model="resnet_fmnist", num_classes=10, in_chans=1)))
    return folder


@pytest.mark.parametrize("where, words", [
    ("/sys/x.safetensors", ["cannot write /sys/x.safetensors: Permission denied", "choose a place you can write to"]),
    ("folder", ["is a folder; name the file to write, e.g. ", "model.safetensors"]),
])
def test_export_to_a_place_it_cannot_write_is_one_line(where, words, tmp_path, capsys):
    from largebatch.tools.cli import main

    run = _exportable_run(tmp_path / "run")
    out = str(tmp_path) if where == "folder" else where
    with pytest.raises(SystemExit) as exit:
        main(["export", str(run), out])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2 and "\n" not in err and err.startswith("error: "), err
    for w in words:
        assert w in err, err
    main(["export", str(run), str(tmp_path / "w.safetensors")])  # the same run exports where it can
    assert "wrote" in capsys.readouterr().out and not list(tmp_path.glob("*.tmp"))
