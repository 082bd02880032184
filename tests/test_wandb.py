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


def test_wandb_with_a_key_but_no_server_logs_offline_after_one_warning(tmp_path, fmnist_dir, monkeypatch):
    """A cluster node without internet, a key in the environment: the run trains, logs offline and says how to
    upload it, instead of ~100 s of retries and two tracebacks. The server here is a closed local port."""
    from conftest import free_port

    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    out = launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 256, "--subset", 512, "--epochs", 1,
                                                     "--report-to", "wandb", "--run-dir", run],
                 WANDB_API_KEY="a" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}", WANDB_INIT_TIMEOUT="5")
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: W&B at http://127.0.0.1:")]
    assert len(warnings) == 1 and "did not answer within 5 s" in warnings[0], out.stderr[-3000:]
    assert f"upload it later with `wandb sync {run.resolve()}/wandb/offline-run-*`" in warnings[0]
    assert "Traceback" not in out.stderr
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


def test_wandb_explicitly_online_but_no_server_is_one_line(tmp_path, fmnist_dir, monkeypatch):
    from conftest import free_port

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = launch(ROOT / "recipes/fashion_mnist.py", ["--global-batch", 256, "--subset", 512, "--epochs", 1,
                                                     "--report-to", "wandb", "--run-dir", tmp_path / "run"],
                 check=False, WANDB_MODE="online", WANDB_API_KEY="a" * 40,
                 WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}", WANDB_INIT_TIMEOUT="5")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "did not answer within 5 s" in errors[0] and "unset WANDB_MODE=online" in errors[0]
