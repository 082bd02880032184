"""The engine matrix: the same trajectory under every engine, optimizer form, accumulation and BN mode.

Each cell trains 6 optimizer steps whose rate changes at every step (3 of gradual warmup, then a cosine
decay to the end), checkpointing every 2 steps; then the run is resumed from its step-2 checkpoint
(mid-warmup) in a copy of its folder. For every cell:
- the logged rate is the schedule's at every step;
- the resumed run logs the uninterrupted run's losses and evaluation bit for bit;
- the losses are those of the one-process reference of the same global batch (1 process x micro-batch
  x W·A accumulation steps: the same examples in the same BN groups) within `drift_tolerance`, exactly
  where the engine promises exact;
- a combination the product refuses (LARS under ZeRO) is refused in one line.
Every cell runs NCHW: DeepSpeed turns channels-last off (its flat weights need contiguous views), and ZeRO-1
is compared with DDP bit for bit, so both must see the same memory format; channels-last's own splits and
resume are tests/test_speed_modes.py's.

One `accelerate launch` per engine trains all of its cells (tests/matrix_train.py).
"""
import itertools
import json
import os

import pytest

from conftest import ROOT, assert_within_drift, launch, step_losses

from largebatch.training.config import parse_config
from largebatch.training.metrics import read_metrics
from largebatch.training.recipes import RECIPES
from largebatch.training.schedule import lr_at, schedule_of
from largebatch.training.runfolder import RunFolder

pytestmark = [pytest.mark.slow, pytest.mark.numerics]

DRIVER = ROOT / "tests/matrix_train.py"
MICRO, STEPS = 32, 6
ENGINES = {"one": (1, None), "ddp": (2, "cpu_2proc.yaml"), "zero1": (2, "zero1.yaml"), "zero2": (2, "zero2.yaml"),
           "zero3": (2, "zero3.yaml")}
FORMS = {"sgd": [], "paper": ["--momentum-form", "paper"], "nesterov": ["--nesterov"],
         "lars": ["--optimizer", "lars"]}
ACCUMULATION = (1, 4)  # per process, on 2 processes; the one-process engine runs 2 x that (the same B)
BN = ("ghost", "micro")
CELLS = list(itertools.product(ENGINES, FORMS, ACCUMULATION, BN))


def _batch(accumulation):
    return MICRO * 2 * accumulation


def args_of(form, accumulation, bn):
    B = _batch(accumulation)
    return [str(a) for a in ["--global-batch", B, "--micro-batch", MICRO, "--bn", bn, "--bn-batch", MICRO // 2,
                             "--subset", STEPS * B, "--epochs", 1, "--warmup-epochs", 0.5, "--schedule", "cosine",
                             "--base-batch", MICRO, "--base-lr", 0.05, "--checkpoint-every", 2,
                             "--keep-checkpoints", 3, "--eval-every", 10, "--precise-bn", 256, "--seed", 5,
                             "--channels-last", "false", *FORMS[form]]]


def _folder(root, engine, form, accumulation, bn):
    return root / f"{engine}-{form}-A{accumulation}-{bn}"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, small_fmnist):
    """Every cell's run folders, one launch per engine."""
    root = tmp_path_factory.mktemp("matrix")
    for engine, (nproc, config) in ENGINES.items():
        cells = [dict(run_dir=str(_folder(root, *cell)), data_dir=str(small_fmnist),
                      args=args_of(*cell[1:]))
                 for cell in CELLS if cell[0] == engine]
        spec = root / f"{engine}.json"
        spec.write_text(json.dumps(cells))
        launch(DRIVER, [spec], nproc=nproc, timeout=1200, **({"config": config} if config else {}))
    return root


def _refused(engine, form):
    return engine.startswith("zero") and form == "lars"


@pytest.mark.parametrize("engine,form,accumulation,bn", CELLS)
def test_cell(matrix, engine, form, accumulation, bn):
    run = _folder(matrix, engine, form, accumulation, bn)
    if _refused(engine, form):
        line = (run / "refused.txt").read_text()
        assert "\n" not in line and "--optimizer lars" in line and f"ZeRO stage {engine[-1]}" in line, line
        return
    assert not (run / "refused.txt").exists()
    steps, evals = read_metrics(RunFolder(run).metrics)
    # The rate: the schedule's at every step, and a new one at every step.
    sched = schedule_of(parse_config(args_of(form, accumulation, bn), **RECIPES["fashion_mnist"].defaults), STEPS)
    logged = [r["lr"] for r in steps]
    assert logged == [lr_at(s, sched) for s in range(STEPS)]
    assert len(set(logged)) == STEPS
    # Resume from step 2: bit for bit the uninterrupted run.
    assert RunFolder(run.parent / (run.name + "-resumed")).metrics.read_text() == RunFolder(run).metrics.read_text()
    # Against the one-process reference of the same global batch: exact for the reference itself, and for
    # ZeRO-1 against DDP (both all-reduce the accumulated gradient once; with 2 ranks that sum is a + b,
    # the same bits in either order); within the drift rule otherwise.
    losses, ref = step_losses(run), step_losses(_folder(matrix, "one", form, accumulation, bn))
    record = os.environ.get("LARGEBATCH_MATRIX_RECORD")  # README's drift table: where each cell stands
    if record:
        with open(record, "a") as f:
            f.write(json.dumps(dict(engine=engine, form=form, accumulation=accumulation, bn=bn, losses=losses,
                                    ref=ref)) + "\n")
    if engine == "one":
        assert losses == ref
    if engine == "zero1":
        assert losses == step_losses(_folder(matrix, "ddp", form, accumulation, bn))
    assert_within_drift(losses, ref, _batch(accumulation))
    # The momentum correction: the paper's eq. 10 form takes torch SGD's steps in every engine.
    if form == "paper":
        assert_within_drift(losses, step_losses(_folder(matrix, engine, "sgd", accumulation, bn)), _batch(accumulation))
