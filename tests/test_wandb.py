"""--report-to wandb logs offline into the run folder when there is no API key."""
import json
import os

from conftest import ROOT, launch


def test_wandb_offline_run_in_run_dir(tmp_path, fmnist_dir, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 256, "--subset", 512, "--epochs", 1,
                                               "--report-to", "wandb", "--run-dir", run])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "wandb").iterdir()) if (run / "wandb").exists() else "no wandb dir"
    assert list(offline[0].glob("run-*.wandb"))
    summary = json.loads((offline[0] / "files" / "wandb-summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["test_error"] == rows[-1]["test_error"]
    assert summary["loss"] == [r for r in rows if "loss" in r][-1]["loss"]
    assert os.environ.get("WANDB_MODE") is None  # the engine set it in the child only
