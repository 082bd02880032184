"""Sweep files: W&B's grid order, the repository's sweeps, malformed files, and a tiny sweep end to end."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from largebatch.tools.cli import main
from largebatch.training.config import Config
from largebatch.training.tracking import uses_wandb
from largebatch.training.rundir import run_dir_of
from largebatch.tools.sweep import checked_runs, load_sweep
from largebatch.training.runfolder import RunFolder

SWEEPS = ROOT / "recipes/sweeps"


def _write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_order_is_wandbs(tmp_path):
    # Recorded from wandb's `sweeps` 0.3.0 (the grid search W&B's server runs):
    # sweeps.next_runs(<this config>, [], n=20) on 2026-11-25.
    path = _write(tmp_path, """
program: recipes/fashion_mnist.py
method: grid
parameters:
  warmup: {values: [gradual, none]}
  seed: {values: [1, 0]}
  global-batch: {values: [512, 256]}
  epochs: {value: 2}
""")
    wandb = [{"epochs": 2, "global-batch": 512, "seed": 1, "warmup": "gradual"},
             {"epochs": 2, "global-batch": 512, "seed": 1, "warmup": "none"},
             {"epochs": 2, "global-batch": 512, "seed": 0, "warmup": "gradual"},
             {"epochs": 2, "global-batch": 512, "seed": 0, "warmup": "none"},
             {"epochs": 2, "global-batch": 256, "seed": 1, "warmup": "gradual"},
             {"epochs": 2, "global-batch": 256, "seed": 1, "warmup": "none"},
             {"epochs": 2, "global-batch": 256, "seed": 0, "warmup": "gradual"},
             {"epochs": 2, "global-batch": 256, "seed": 0, "warmup": "none"}]
    sweep = load_sweep(path)
    assert sweep.runs == wandb
    assert sweep.run_name(wandb[0]) == "global-batch=512,seed=1,warmup=gradual"


@pytest.mark.parametrize("name, count, varying", [
    ("batch_size", 16, {"global-batch": [64, 128, 256, 512, 1024, 2048, 4096, 8192], "seed": [0, 1]}),
    ("warmup", 6, {"warmup": ["none", "constant", "gradual"], "seed": [0, 1]}),
    ("batchnorm", 3, {"bn": ["ghost", "micro", "sync"]}),
    ("weight_decay", 2, {"wd-scaling": ["none", "inverse"]}),
    ("lr_sensitivity", 3, {"base-lr": [0.05, 0.1, 0.2]}),
    ("beyond", 3, {"optimizer": ["sgd", "lars", "adascale"]}),
    ("figure1", 16, {"global-batch": [64, 128, 256, 512, 1024, 2048, 4096, 8192], "seed": [0, 1]}),
    ("budget", 12, {"epochs": [6, 10], "global-batch": [256, 128, 64], "seed": [0, 1]}),
    ("edge_warmup", 12, {"warmup": ["none", "constant", "gradual"], "global-batch": [512, 1024], "seed": [0, 1]}),
    ("edge_lr", 18, {"base-lr": [0.05, 0.1, 0.2], "global-batch": [256, 512, 1024], "seed": [0, 1]}),
    ("edge_lr_scaling", 12, {"lr-scaling": ["linear", "sqrt", "none"], "global-batch": [512, 1024], "seed": [0, 1]}),
    ("edge_zero_gamma", 12, {"zero-init-last": [True, False], "global-batch": [256, 512, 1024], "seed": [0, 1]}),
    ("edge_bn", 16, {"bn-batch": [16, 32, 64, 256], "global-batch": [512, 1024], "seed": [0, 1]}),
    ("edge_weight_decay", 8, {"wd-scaling": ["none", "inverse"], "global-batch": [512, 1024], "seed": [0, 1]}),
    ("edge_beyond", 12, {"optimizer": ["sgd", "lars", "adascale"], "global-batch": [1024, 2048], "seed": [0, 1]}),
    ("figure1_60", 30, {"global-batch": [256, 512, 1024, 2048, 4096, 8192], "seed": [0, 1, 2, 3, 4]}),
    ("imagenet_batch_size", 30, {"global-batch": [256, 512, 1024, 2048, 4096, 8192], "seed": [0, 1, 2, 3, 4]}),
])
def test_repository_sweeps(name, count, varying, tmp_path):
    sweep = load_sweep(SWEEPS / f"{name}.yaml")
    assert len(sweep.runs) == count
    assert {k: v for k, v in sweep.parameters.items() if len(v) > 1} == varying
    runs = checked_runs(sweep, tmp_path)  # every run's options pass the recipe's own validation
    configs = [r.config for r in runs]
    if name.startswith("imagenet"):
        assert {(c.model, c.epochs, c.bn, c.bn_batch, c.warmup, c.warmup_epochs) for c in configs} == {
            ("resnet50", 90, "ghost", 32, "gradual", 5)}
    if name.startswith("edge"):
        # The ablations at the edge of Figure 1's flat region share its budget, so its runs are reused.
        figure1 = load_sweep(SWEEPS / "figure1.yaml")
        assert {c.epochs for c in configs} == {figure1.parameters["epochs"][0]}
        assert {c.global_batch for c in configs} <= set(figure1.parameters["global-batch"])
        assert sum(_same_as_figure1(c, figure1, tmp_path) for c in configs) >= 4
    elif name not in ("batch_size", "figure1", "figure1_60", "budget") and not name.startswith("imagenet"):
        # The ablations sit at one batch size the batch-size sweep also ran, so its runs are reused.
        batch = load_sweep(SWEEPS / "batch_size.yaml")
        assert len({c.global_batch for c in configs}) == 1
        assert configs[0].global_batch in batch.parameters["global-batch"]
        assert {c.epochs for c in configs} == {batch.parameters["epochs"][0]}


def test_figure1_at_60_epochs_reuses_the_committed_runs(tmp_path, capsys):
    """figure1_60.yaml's header promises its finished runs come from docs/results' records, not a retraining."""
    import shutil
    from largebatch.tools.sweep import _still_to_run
    for done in (ROOT / "docs/results/fashion-mnist-60-epochs").glob("budget_wide_*"):
        shutil.copytree(done, tmp_path / done.name)
    sweep = load_sweep(SWEEPS / "figure1_60.yaml")
    (tmp_path / sweep.name).mkdir()
    todo = _still_to_run(sweep, checked_runs(sweep, tmp_path), tmp_path)
    assert capsys.readouterr().out.count("reusing it") == 12  # B = 256, 2048 on seeds 0-4; 4096, 8192 on seed 0
    assert {r.params["global-batch"] for r in todo} == {512, 1024, 4096, 8192} and len(todo) == 18


def _same_as_figure1(config, figure1, tmp_path) -> bool:
    """Whether figure1.yaml has a run of exactly this configuration (other than where it is stored)."""
    import dataclasses
    theirs = [dataclasses.replace(r.config, run_dir="") for r in checked_runs(figure1, tmp_path / "figure1")]
    return dataclasses.replace(config, run_dir="") in theirs


@pytest.mark.parametrize("text, expected", [
    ("program: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("program: recipes/fashion_mnist.py\nmethod: bayes\nparameters: {seed: {values: [1]}}", "method 'bayes'"),
    ("method: grid\nparameters: {seed: {values: [1]}}", "needs 'program"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\n", "needs a 'parameters' mapping"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {global-bacth: {values: [256]}}",
     "unknown parameter 'global-bacth' (did you mean global-batch?)"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {seed: {values: []}}", "non-empty list"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {seed: {values: 3}}", "non-empty list"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {seed: {min: 0, max: 3}}",
     "must be {values: [...]} or {value: ...}"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {seed: {values: [1, 1]}}", "repeats a value"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\ncommand: [python, '${program}']\n"
     "parameters: {seed: {value: 1}}", "must pass ${args}"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\ncommand: ['${program}', '${args_json}', '${args}']\n"
     "parameters: {seed: {value: 1}}", "found ${args_json}"),
    ("program: recipes/nope.py\nmethod: grid\nparameters: {seed: {value: 1}}", "program recipes/nope.py does not exist"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {global-batch: {values: [256, 1000]}}",
     "run global-batch=1000: --global-batch 1000 is not divisible by --micro-batch 256"),
    ("program: recipes/fashion_mnist.py\nmethod: grid\nparameters: {warmup: {values: [gradual, linear]}}",
     "run warmup=linear: --warmup 'linear' is not one of"),
])
def test_malformed_sweep_is_one_line(text, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = _write(tmp_path, text)
    with pytest.raises(SystemExit) as exit:
        main(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 2
    assert "\n" not in err and err.startswith("error: "), err
    assert expected in err, err
    assert not (tmp_path / "out").exists()  # nothing launched, nothing written


def _sweep(*args, check=True, **env):
    proc = subprocess.run([sys.executable, "-m", "largebatch", "sweep", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")},
                               "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2", **env})
    assert proc.returncode == 0 or not check, proc.stdout + proc.stderr
    return proc


TINY = """
name: {name}
program: recipes/fashion_mnist.py
method: grid
parameters:
  global-batch: {{values: {batches}}}
  epochs: {{value: 1}}
  subset: {{value: 512}}
  warmup-epochs: {{value: 0.5}}
"""


@pytest.mark.slow
def test_tiny_sweep_runs_skips_resumes_and_reuses(tmp_path, fmnist_dir):
    out = tmp_path / "sweeps"
    first = _write(tmp_path, TINY.format(name="tiny", batches=[128, 256]))
    proc = _sweep(first, "--out", out)
    for b in (128, 256):
        run = out / "tiny" / f"global-batch={b}"
        summary = json.loads(RunFolder(run).summary.read_text())
        config = json.loads(RunFolder(run).config.read_text())
        assert summary["status"] == "finished" and 0 < summary["test_error"] < 1
        assert (config["global_batch"], config["micro_batch_used"], config["epochs"]) == (b, b, 1)
        assert f"global-batch={b}: finished: test error {100 * summary['final_test_error']:.2f}%" in proc.stdout
    # Run again: nothing to do. Drop one run's summary, as if killed after its last checkpoint: it resumes.
    (out / "tiny/global-batch=256/summary.json").unlink()
    again = _sweep(first, "--out", out).stdout
    assert "global-batch=128: already finished" in again
    assert "resuming from" in again and "global-batch=256: finished" in again
    # Another sweep sharing a finished run reuses it instead of training it again; its new run logs to
    # W&B when asked, offline without a key.
    other = _write(tmp_path, TINY.format(name="other", batches=[256, 512]), "other.yaml")
    shared = _sweep(other, "--out", out, "--report-to", "wandb", HOME=str(tmp_path / "home")).stdout
    assert "global-batch=256: the same run finished as" in shared
    assert (out / "other/global-batch=256").resolve() == (out / "tiny/global-batch=256").resolve()
    assert (out / "other/global-batch=512/summary.json").is_file()
    assert len(list((out / "other/global-batch=512/wandb").glob("offline-run-*"))) == 1


def test_under_a_wandb_agent_runs_log_to_its_sweep(monkeypatch):
    cfg = Config()
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    assert not uses_wandb(cfg) and str(run_dir_of(cfg, "fashion-mnist")) == "runs/fashion-mnist-B256-seed0"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "run7")
    assert uses_wandb(cfg) and str(run_dir_of(cfg, "fashion-mnist")) == "runs/wandb-sweep-abc123/run7"
    assert str(run_dir_of(Config(run_dir="here"), "fashion-mnist")) == "here"


def test_a_damaged_summary_is_run_again_not_taken_as_finished(tmp_path, capsys, monkeypatch):
    from largebatch.tools.sweep import _still_to_run

    monkeypatch.chdir(ROOT)
    sweep = load_sweep(_write(tmp_path, TINY.format(name="tiny", batches=[128, 256])))
    runs = checked_runs(sweep, tmp_path / "out")
    for run, summary in zip(runs, ['{"status": "finished", "test_error": 0.1}', "{garbage"]):
        run.folder.mkdir(parents=True)
        RunFolder(run.folder).summary.write_text(summary)
    todo = _still_to_run(sweep, runs, tmp_path / "out")
    out = capsys.readouterr()
    assert [r.name for r in todo] == ["global-batch=256"]  # resumed: its last checkpoint rewrites the summary
    assert "global-batch=128: already finished" in out.out and "global-batch=256: already" not in out.out
    assert "global-batch=256/summary.json is damaged" in out.err


def test_editing_the_grid_renames_the_runs_already_trained(tmp_path, capsys, monkeypatch):
    """A folder's name lists the parameters with several values, so adding seeds to a one-seed sweep renames every
    run: the work done under the old names is moved to the new ones, finished or half-done, not trained again."""
    import dataclasses
    from largebatch.tools.sweep import _still_to_run

    monkeypatch.chdir(ROOT)
    one_seed = TINY.format(name="tiny", batches=[128, 256]) + "  seed: {value: 0}\n"
    sweep = load_sweep(_write(tmp_path, one_seed))
    out = tmp_path / "out"
    for run in checked_runs(sweep, out):
        # Each one-seed run half-trained, and beside it a folder that trained something else (2 epochs).
        for name, config in ((run.name, run.config), (f"{run.name}-2-epochs", dataclasses.replace(run.config, epochs=2))):
            (out / "tiny" / name / "checkpoints").mkdir(parents=True)
            RunFolder(out / "tiny" / name).config.write_text(json.dumps(dataclasses.asdict(config)))
    RunFolder(out / "tiny/global-batch=128").summary.write_text('{"status": "finished", "test_error": 0.1}')

    more = load_sweep(_write(tmp_path, one_seed.replace("seed: {value: 0}", "seed: {values: [0, 1]}")))
    todo = _still_to_run(more, checked_runs(more, out), out)
    said = capsys.readouterr().out
    assert [r.name for r in todo] == ["global-batch=128,seed=1", "global-batch=256,seed=0", "global-batch=256,seed=1"]
    assert ("global-batch=128,seed=0: already finished (trained as global-batch=128 before the sweep file changed: "
            "renamed)") in said
    assert "global-batch=256,seed=0: resumes (trained as global-batch=256" in said
    assert (out / "tiny/global-batch=256,seed=0/checkpoints").is_dir()  # the half-done run resumes from its own
    assert not (out / "tiny/global-batch=128").exists() and not (out / "tiny/global-batch=256").exists()
    assert {p.name for p in (out / "tiny").iterdir()} >= {"global-batch=128-2-epochs", "global-batch=256-2-epochs"}


def test_a_run_killed_by_a_signal_is_said_so(tmp_path):
    from types import SimpleNamespace

    from largebatch.tools.sweep import _outcome

    run = SimpleNamespace(folder=tmp_path)
    assert _outcome(run, -15) == "failed (killed by SIGTERM)"
    assert _outcome(run, 75).startswith("stopped by a signal after a checkpoint")
    assert _outcome(run, 1) == "failed (exit status 1)"
    # A finished run's line quotes the error the report uses, not its last evaluation.
    RunFolder(tmp_path).summary.write_text(json.dumps({"status": "finished", "test_error": 0.0675,
                                                       "final_test_error": 0.0676}))
    assert _outcome(run, 0) == "finished: test error 6.76%"


def test_the_eta_counts_work_not_runs(tmp_path):
    from largebatch.tools.sweep import _work_left, eta_seconds

    # Two runs resumed at 80% took 300 s each: a whole run is 1500 s, not 300.
    finished, todo, running = [(0.2, 300.0), (0.2, 300.0)], [1.0, 1.0], [(1.0, 100.0), (1.0, 100.0)]
    assert eta_seconds(finished, todo, running, jobs=2) == pytest.approx((2 * 1500 + 2 * 1400) / 2)
    assert eta_seconds(finished, [], [(1.0, 100.0)], jobs=2) == pytest.approx(1400)  # one job left: no sharing
    # A run's share left is read off its last checkpoint and its total steps.
    folder = RunFolder(tmp_path / "run")
    assert _work_left(folder.path) == 1.0
    folder.path.mkdir()
    folder.config.write_text(json.dumps({"total_steps": 879}))
    (folder.checkpoints / "step_00000735").mkdir(parents=True)
    assert _work_left(folder.path) == pytest.approx(1 - 735 / 879)
