"""The engine in this process (no launch): train_loop's steps reach the per-step callback with the rows the
run folder records, and a run resumed in-process from its checkpoint ends where the whole run ended."""
import dataclasses
import shutil

from largebatch.training import checkpoint, engine
from largebatch.training.config import Config
from largebatch.training.data import load_fashion_mnist
from largebatch.training.metrics import read_metrics, read_summary
from largebatch.training.models import build_model
from largebatch.training.runfolder import FINISHED, PROGRESS_VERSION, Mode, Progress, RunFolder


def _train(cfg, data, **kwargs):
    return engine.train(cfg, data, build_model(cfg, data.num_classes, data.in_chans), "fashion-mnist", **kwargs)


def test_train_in_process_calls_back_each_step_and_records_the_run(tmp_path, small_fmnist, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = load_fashion_mnist(str(small_fmnist))
    cfg = Config(model="resnet_fmnist", global_batch=64, micro_batch=32, subset=192, epochs=1, warmup="none",
                 precise_bn=0, checkpoint_every=2, run_dir=str(tmp_path / "run")).validate()
    seen = []
    last = _train(cfg, data, on_step=lambda step, row: seen.append((step, row)))
    folder = RunFolder(cfg.run_dir)
    steps, evals = read_metrics(folder.metrics)
    assert [s for s, _ in seen] == [0, 1, 2] and [row for _, row in seen] == steps
    assert evals[-1] == last and read_summary(folder.path).status == FINISHED
    info = folder.read_config()
    assert info["mode"] == Mode.PLAIN.value and info["accumulation_steps"] == 2 and info["total_steps"] == 3
    path, progress = checkpoint.latest_usable(folder.checkpoints)
    assert isinstance(progress, Progress) and progress.version == PROGRESS_VERSION and progress.step == 3

    # Resumed from the checkpoint of step 2, the run takes step 3 again and logs what it logged.
    resumed = RunFolder(tmp_path / "resumed")
    for kept in checkpoint.completed(folder.checkpoints)[:-1]:
        shutil.copytree(kept, resumed.checkpoints / kept.name)
    _train(dataclasses.replace(cfg, run_dir=str(resumed.path), resume=True), data)
    assert read_metrics(resumed.metrics) == (steps, evals)
