"""The engine in this process (no launch): train_loop's steps reach the per-step callback with the rows the
run folder records, each after the next step was taken (its statistics are summed beside that step), and a
run resumed in-process from its checkpoint ends where the whole run ended."""
import dataclasses
import datetime
import shutil
import types

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from largebatch.training import checkpoint, engine
from largebatch.training.config import Config
from largebatch.training.data import load_fashion_mnist
from largebatch.training.metrics import read_metrics, read_summary
from largebatch.training.models import build_model
from largebatch.training.runfolder import FINISHED, PROGRESS_VERSION, Mode, Progress, RunFolder
from largebatch.training.step import StepStats, Stepper, Summing


def _train(cfg, data, **kwargs):
    return engine.train(cfg, data, build_model(cfg, data.num_classes, data.in_chans), "fashion-mnist", **kwargs)


def test_train_in_process_calls_back_each_step_and_records_the_run(tmp_path, small_fmnist, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = load_fashion_mnist(str(small_fmnist))
    cfg = Config(model="resnet_fmnist", global_batch=64, micro_batch=32, subset=192, epochs=1, warmup="none",
                 precise_bn=0, checkpoint_every=2, run_dir=str(tmp_path / "run")).validate()
    taken, seen = [], []
    take = Stepper.step
    monkeypatch.setattr(Stepper, "step", lambda self, *a: taken.append(len(taken)) or take(self, *a))
    last = _train(cfg, data, on_step=lambda step, row: seen.append((step, row, len(taken))))
    folder = RunFolder(cfg.run_dir)
    steps, evals = read_metrics(folder.metrics)
    assert [s for s, _, _ in seen] == [0, 1, 2] and [row for _, row, _ in seen] == steps
    # Step 0's row waits for step 1 to be taken; step 1's is logged before the checkpoint after it, step 2's
    # before the last evaluation.
    assert [n for _, _, n in seen] == [2, 2, 3]
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


def _sum_two_ranks(rank: int, init: str, joined, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        stats = StepStats(*torch.full((6,), float(rank + 1)).unbind())
        if rank == 1 and not joined.wait(timeout=20):  # rank 0's sum blocked: it never said it was past it
            results.put((rank, None))
            return
        summing = Summing(stats, types.SimpleNamespace(num_processes=2))
        if rank == 0:
            joined.set()  # past its sum's start though rank 1 has not begun its own
        results.put((rank, summing.wait().loss_sum.item()))
    finally:
        dist.destroy_process_group()


def test_a_steps_statistics_are_summed_without_blocking_the_rank_that_starts_the_sum(tmp_path):
    """The all-reduce runs beside the next step only if starting it returns at once: rank 0 starts its sum,
    and only then does rank 1 begin its own (a blocking all-reduce would wait for rank 1 forever)."""
    ctx = mp.get_context("spawn")
    joined, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_sum_two_ranks, args=(r, f"file://{tmp_path}/rendezvous", joined, results))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == {0: 3.0, 1: 3.0}
