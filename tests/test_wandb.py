"""--report-to wandb logs offline into the run folder when there is no API key."""
import pytest

from conftest import ROOT, launch

pytestmark = pytest.mark.slow  # trains: see `pytest -m "not slow"` for the fast tier


def test_wandb_offline_run_in_run_dir(tmp_path, fmnist_dir, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 256, "--subset", 512, "--epochs", 1,
                                               "--report-to", "wandb", "--run-dir", run])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "wandb").iterdir()) if (run / "wandb").exists() else "no wandb dir"
    # This wandb ships no reader for its offline log; the keys we log must be in it.
    log = next(offline[0].glob("run-*.wandb")).read_bytes()
    for key in (b"test_error", b"train_error", b"test_loss", b"loss", b"lr", b"examples", b"global_batch"):
        assert key in log, key
