"""A run folder written by the code of December 2026 (tests/data/run_today: 4 steps of Fashion-MNIST at B=256,
its checkpoint of step 2 kept) still reports and still resumes: the run folder's format is a contract."""
import shutil

import pytest

from conftest import ROOT, assert_within_drift, launch, step_losses

from largebatch.tools.compare import compare
from largebatch.tools.report import load_run
from largebatch.training import checkpoint
from largebatch.training.runfolder import SUMMARY, RunFolder

OLD_RUN = ROOT / "tests/data/run_today"
ARGS = ["--global-batch", 256, "--micro-batch", 128, "--subset", 512, "--epochs", 2, "--warmup-epochs", 0.5,
        "--eval-every", 1, "--checkpoint-every", 2, "--keep-checkpoints", 2]


def test_old_run_loads_for_the_report_and_compare(tmp_path):
    run = load_run(OLD_RUN)
    assert run.status == "finished" and run.config["mode"] == "plain (DDP or one process)"
    assert [e["epoch"] for e in run.evals] == [1.0, 2.0] and run.error == pytest.approx(0.876)
    assert "B = 256" in compare([str(OLD_RUN), str(OLD_RUN)], str(tmp_path / "curves.png"))


def test_old_checkpoint_verifies():
    path, progress = checkpoint.latest_usable(RunFolder(OLD_RUN).checkpoints)
    assert path.name == "step_00000002" and progress.step == 2 and progress.version == 0


@pytest.mark.slow
@pytest.mark.numerics
def test_old_run_resumes_to_the_same_end(tmp_path, small_fmnist):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run, ignore=shutil.ignore_patterns(SUMMARY))
    out = launch(ROOT / "recipes/fashion_mnist.py", ARGS + ["--data-dir", small_fmnist, "--run-dir", run, "--resume"])
    assert "resuming from" in out.stdout
    assert RunFolder(run).summary.is_file()
    assert_within_drift(step_losses(run), step_losses(OLD_RUN), 256)
