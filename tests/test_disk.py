"""A full disk or a file-size limit while the run folder is written: one line naming the cause, the intact
previous checkpoint and the fix, exit status 2, and nothing half-written left behind."""
import contextlib
import json
import resource
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, launch_env

from largebatch.errors import UserError
from largebatch.training.metrics import MetricsLog, write_summary
from largebatch.training.runfolder import RunFolder

RECIPE = ROOT / "recipes/fashion_mnist.py"


def _args(data, run_dir):
    return ["--data-dir", data, "--subset", 2048, "--global-batch", 256, "--micro-batch", 64, "--epochs", 4,
            "--warmup", "none", "--checkpoint-every", 2, "--run-dir", run_dir]


@contextlib.contextmanager
def file_size_limit(limit):
    """RLIMIT_FSIZE in this process (Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def small_disk(tmp_path):
    """A function mounting a tmpfs of the given size at a fresh folder (root only; skipped elsewhere)."""
    mounted = []

    def mount(size):
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _ends_in_one_line(proc):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]  # after the progress bar's lines
    assert line.startswith("error: could not write checkpoint ") and proc.stderr.count("error") == 1, proc.stderr
    return line


@pytest.mark.slow
@pytest.mark.parametrize("size, cause", [
    ("3m", "No space left on device"),  # safetensors' own error type, "(os error 28)" in its message
    ("4m", "the write came up short, as on a full disk"),  # torch's zip writer: "unexpected pos"
])
def test_full_disk_during_a_checkpoint_is_one_line(size, cause, small_disk, small_fmnist):
    """A checkpoint takes 2.5 MB: the first fits, the second fills the disk (in model.safetensors on 3 MB,
    in optimizer.bin, which torch writes, on 4 MB)."""
    run = small_disk(size) / "run"
    proc = subprocess.run(_command(_args(small_fmnist, run)), cwd=ROOT, env=launch_env(),
                          capture_output=True, text=True, timeout=600)
    line = _ends_in_one_line(proc)
    assert cause in line and "MB free" in line, line
    assert f"the previous checkpoint {run / 'checkpoints/step_00000002'} is intact" in line, line
    assert "free space, then rerun with --resume" in line, line
    assert sorted(p.name for p in RunFolder(run).checkpoints.iterdir()) == ["step_00000002"]  # no .tmp_step_4


@pytest.mark.slow
def test_file_size_limit_during_the_first_checkpoint_is_one_line(tmp_path, small_fmnist):
    run = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(_command(_args(small_fmnist, run)), cwd=ROOT, env=launch_env(),
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)
    line = _ends_in_one_line(proc)
    assert "File too large (the file-size limit is 200 KB); raise the limit (ulimit -f unlimited)" in line, line
    assert "previous checkpoint" not in line
    assert list(RunFolder(run).checkpoints.iterdir()) == []  # no .tmp_step_2


def _command(args):
    return [sys.executable, str(RECIPE), *map(str, args)]


def test_a_row_that_does_not_fit_leaves_the_log_as_it_was(tmp_path):
    log = RunFolder(tmp_path).metrics
    log.write_text('{"step": 0, "loss": 2.3}\n')
    before = log.read_bytes()
    (RunFolder(tmp_path).checkpoints / "step_00000001").mkdir(parents=True)
    metrics = MetricsLog(log, SimpleNamespace(is_main_process=True, log=lambda *a, **k: None),
                         RunFolder(tmp_path).checkpoints)
    with file_size_limit(len(before) + 10), pytest.raises(UserError) as e:
        metrics.log({"step": 1, "loss": 2.2, "epoch": 0.25}, step=1)
    assert log.read_bytes() == before  # the 10 bytes that fitted are taken back
    assert str(e.value).startswith(f"could not write {log}: File too large")
    assert f"previous checkpoint {tmp_path / 'checkpoints/step_00000001'} is intact" in str(e.value)


def test_a_summary_that_does_not_fit_leaves_nothing_behind(tmp_path):
    RunFolder(tmp_path).metrics.write_text('{"epoch": 1.0, "train_error": 0.5, "test_error": 0.4, '
                                            '"test_loss": 1.0}\n')
    with file_size_limit(20), pytest.raises(UserError, match=r"could not write .*summary.json: File too large"):
        write_summary(tmp_path, "finished")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RunFolder(tmp_path).metrics.name]  # no summary.json(.tmp)
    write_summary(tmp_path, "finished")
    assert json.loads(RunFolder(tmp_path).summary.read_text())["test_error"] == 0.4
