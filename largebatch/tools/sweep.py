"""Grid sweeps in W&B's sweep YAML format, run here without a W&B server.

A sweep file works unchanged with `wandb sweep FILE` + `wandb agent ID`. `largebatch sweep FILE` runs
the same grid in the order W&B's grid search proposes it (parameters sorted by name, each one's values
in the order written), one folder per run under <out>/<sweep name>/, skipping finished runs, resuming
interrupted ones (also those trained under another name before the file was edited) and reusing an identical
finished run of another sweep in the same <out>.

Written here because wandb runs a grid only through its server (`wandb agent`), and its local
controller needs the `sweeps` package, which pins numpy < 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from ..errors import EXIT_STOPPED, UserError
from ..training.config import Config, parse_config
from ..training.tracking import SWEEP
from ..training.metrics import read_summary
from ..training.checkpoint import completed
from ..training.runfolder import DIVERGED, TEST_ERROR, RunFolder
from ..training.preempt import LAUNCHED_BY
from ..training.recipes import recipe_of

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's default


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    file: Path
    program: str
    command: list[str]
    parameters: dict[str, list]  # every parameter's values; a `value` constant is a list of one
    runs: list[dict]  # each run's parameters, in W&B's grid order

    def run_name(self, params: dict) -> str:
        """The run's folder name: the parameters that vary in this sweep, e.g. global-batch=4096,seed=1."""
        varying = [k for k in sorted(self.parameters) if len(self.parameters[k]) > 1]
        return ",".join(f"{k}={params[k]}" for k in varying) or "run"

    @property
    def compared(self) -> list[str]:
        """The options the sweep compares, as config keys (global_batch): those that vary, except the seed."""
        return [k.replace("-", "_") for k in sorted(self.parameters) if len(self.parameters[k]) > 1 and k != "seed"]


def wandb_args(params: dict) -> list[str]:
    """The program's arguments as W&B's `${args}` writes them: --name=value."""
    return [f"--{k}={v}" for k, v in sorted(params.items())]


def expand_grid(parameters: dict[str, list]) -> list[dict]:
    """Every combination, in W&B's grid order: the product over parameter names sorted, values as written."""
    names = sorted(parameters)
    return [dict(zip(names, combo)) for combo in itertools.product(*(parameters[n] for n in names))]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a grid sweep file; any problem is one UserError naming the file and the fix."""
    path = Path(path)

    def bad(why: str) -> UserError:
        return UserError(f"sweep {path}: {why}")

    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise bad(f"must be a mapping with program, method and parameters, not {type(spec).__name__}")
    if spec.get("method") != "grid":
        raise bad(f"method {spec.get('method')!r}: largebatch sweep runs grids only (method: grid); "
                  f"random and bayes searches need a W&B server: wandb sweep {path}")
    program = spec.get("program")
    if not isinstance(program, str) or not program:
        raise bad("needs 'program: recipes/<recipe>.py', the script each run launches")
    command = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise bad("'command' must be a list of strings, as in W&B's sweep format")
    unknown = [c for c in command if c.startswith("${") and c not in DEFAULT_COMMAND]
    if unknown or "${args}" not in command:
        raise bad(f"'command' must pass ${{args}} and may use only {', '.join(DEFAULT_COMMAND)}"
                  + (f"; found {unknown[0]}" if unknown else ""))
    raw = spec.get("parameters")
    if not isinstance(raw, dict) or not raw:
        raise bad("needs a 'parameters' mapping of option: {values: [...]} or {value: ...}")
    fields = {f.name for f in dataclasses.fields(Config)}
    parameters = {}
    for name, p in raw.items():
        field = str(name).replace("-", "_")
        if field not in fields:
            near = difflib.get_close_matches(field, fields, n=1)
            raise bad(f"unknown parameter {name!r}" + (f" (did you mean {near[0].replace('_', '-')}?)" if near else "")
                      + "; parameters are the recipe's options, see its --help")
        if not isinstance(p, dict) or len({"value", "values"} & set(p)) != 1 or set(p) - {"value", "values"}:
            raise bad(f"parameter {name!r} must be {{values: [...]}} or {{value: ...}} in a grid sweep, not {p!r}")
        values = p["values"] if "values" in p else [p["value"]]
        if not isinstance(values, list) or not values:
            raise bad(f"parameter {name!r}: 'values' must be a non-empty list, not {values!r}")
        if not all(isinstance(v, (int, float, str, bool)) for v in values):
            raise bad(f"parameter {name!r}: values must be numbers, strings or booleans, not {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise bad(f"parameter {name!r} repeats a value in {values!r}")
        parameters[str(name)] = values
    name = spec.get("name") or path.stem
    return Sweep(str(name), path, program, command, parameters, expand_grid(parameters))


@dataclasses.dataclass
class _Run:
    name: str
    params: dict
    folder: Path
    config: Config

    def key(self, program: str) -> str:
        """Runs with equal keys train the same model the same way: one can stand in for the other."""
        return _key(self.config.trajectory(), self.config.data_dir, program)


def _key(trajectory: dict, data_dir: str, program: str) -> str:
    return json.dumps(dict(trajectory, program=str(Path(program).resolve()), data_dir=data_dir), sort_keys=True)


_TRAJECTORY = list(Config().trajectory())  # the option names that shape training


def checked_runs(sweep: Sweep, out: Path) -> list[_Run]:
    """Each run of the sweep, with its options checked against the recipe's before anything is launched."""
    if not Path(sweep.program).is_file():
        raise UserError(f"sweep {sweep.file}: program {sweep.program} does not exist; sweep files name it "
                        f"relative to the folder you run from")
    defaults = recipe_of(sweep.program)[1].defaults
    runs = []
    for params in sweep.runs:
        name = sweep.run_name(params)
        folder = out / sweep.name / name
        try:
            cfg = parse_config(wandb_args(params) + [f"--run-dir={folder}"], **defaults)
            cfg.split(1)  # divides on one process at least; the launch checks its own process count
        except UserError as e:
            raise UserError(f"sweep {sweep.file}, run {name}: {e}") from None
        runs.append(_Run(name, params, folder, cfg))
    return runs


def _finished_elsewhere(out: Path, here: str) -> dict[str, Path]:
    """Finished runs of the other sweeps in `out` (read from the sweep.yaml each sweep folder keeps), by key."""
    found = {}
    for copy in sorted(out.glob("*/sweep.yaml")):
        if copy.parent.name == here:
            continue
        try:
            other = load_sweep(copy)
            runs = checked_runs(other, out)
        except UserError:
            continue  # a folder we cannot read is simply not reused
        for run in runs:
            if not run.folder.is_symlink() and read_summary(run.folder) is not None:
                found.setdefault(run.key(other.program), run.folder)
    return found


def command(sweep: Sweep, run: _Run, report_to: str) -> list[str]:
    """The command W&B's agent would run, plus the run folder, --resume and the W&B choice."""
    cmd = []
    for part in sweep.command:
        if part == "${env}":
            continue  # the agent's /usr/bin/env: we pass the environment directly
        elif part == "${interpreter}":
            cmd.append(sys.executable)
        elif part == "${program}":
            cmd.append(sweep.program)
        elif part == "${args}":
            cmd += wandb_args(run.params) + [f"--run-dir={run.folder}", "--resume", f"--report-to={report_to}"]
        else:
            cmd.append(part)
    if cmd and not shutil.which(cmd[0]):
        local = Path(sys.executable).parent / cmd[0]  # e.g. `accelerate` from this venv when it is not on PATH
        cmd[0] = str(local) if local.exists() else cmd[0]
    return cmd


def _outcome(run: _Run, code: int) -> str:
    if code == EXIT_STOPPED:
        return "stopped by a signal after a checkpoint (running the sweep again continues it)"
    result = read_summary(run.folder)
    if result is None:
        return f"failed (killed by {signal.Signals(-code).name})" if code < 0 else f"failed (exit status {code})"
    if result.status == DIVERGED:
        return "diverged"
    # The error the report and W&B use (median of the last evaluations), not the last one, so the numbers agree.
    final = result.final_test_error if result.final_test_error is not None else result.last_eval[TEST_ERROR]
    return f"finished: test error {100 * final:.2f}%"


def run_sweep(path: str | Path, out: str | Path = "runs/sweeps", report_to: str = "none",
              jobs: int | None = None, dry_run: bool = False) -> int:
    """Run the sweep's grid here; returns the number of runs that failed or were stopped (diverged runs count
    as results)."""
    sweep, out = load_sweep(path), Path(out)
    runs = checked_runs(sweep, out)
    # A command that launches its own processes (accelerate launch) takes every GPU, one run at a time.
    per_gpu = "${interpreter}" in sweep.command
    gpus = torch.cuda.device_count() if per_gpu else 0
    jobs = jobs or max(1, gpus)
    print(f"sweep {sweep.name}: {len(runs)} runs of {sweep.program} into {out / sweep.name}, {jobs} at a time")
    if dry_run:
        for run in runs:
            print(" ".join(command(sweep, run, report_to)))
        return 0
    (out / sweep.name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.file, out / sweep.name / "sweep.yaml")
    todo = _still_to_run(sweep, runs, out)
    return _run_all(sweep, todo, report_to, jobs, gpus)


def _under_old_names(sweep: Sweep, runs: list[_Run], out: Path) -> dict[str, Path]:
    """This sweep's run folders that its grid no longer names, by what they trained. A folder's name lists the
    parameters with more than one value (W&B's way), so giving a one-value parameter a second value (more seeds)
    or dropping one renames every run; these folders keep the work done under the old names."""
    names, found = {run.name for run in runs}, {}
    for folder in sorted(p for p in (out / sweep.name).glob("*") if p.is_dir() and not p.is_symlink()):
        rf = RunFolder(folder)
        if folder.name in names or not rf.config.is_file():
            continue
        try:
            saved = rf.read_config()
        except (OSError, ValueError):
            continue  # unreadable: left where it is, and trained anew under the new name
        if all(name in saved for name in _TRAJECTORY):
            found.setdefault(_key({n: saved[n] for n in _TRAJECTORY}, saved.get("data_dir"), sweep.program), folder)
    return found


def _still_to_run(sweep: Sweep, runs: list[_Run], out: Path) -> list[_Run]:
    """The runs not finished yet; an identical run finished by another sweep is linked, not retrained, and one
    this sweep trained under another folder name (before its file was edited) is renamed and finished."""
    elsewhere, renamed = _finished_elsewhere(out, sweep.name), _under_old_names(sweep, runs, out)
    todo = []
    for run in runs:
        key = run.key(sweep.program)
        twin, old = elsewhere.get(key), renamed.pop(key, None)
        moved = ""
        if old and not run.folder.exists():
            old.rename(run.folder)
            moved = f" (trained as {old.name} before the sweep file changed: renamed)"
        if read_summary(run.folder) is not None:
            print(f"  {run.name}: already finished{moved}")
        elif twin and not run.folder.exists():
            run.folder.symlink_to(os.path.relpath(twin, run.folder.parent))
            print(f"  {run.name}: the same run finished as {twin}; reusing it")
        else:
            todo.append(run)
            if moved:
                print(f"  {run.name}: resumes{moved}")
    return todo


def _work_left(folder: Path) -> float:
    """The share of a run still to train: 1 for a new run, less for one resuming from a checkpoint."""
    rf = RunFolder(folder)
    saved = completed(rf.checkpoints)
    if not saved or not rf.config.exists():
        return 1.0
    total = rf.read_config().get("total_steps") or 0
    return min(1.0, max(0.0, 1 - int(saved[-1].name.removeprefix("step_")) / total)) if total else 1.0


def eta_seconds(finished: list[tuple[float, float]], todo: list[float], running: list[tuple[float, float]],
                jobs: int) -> float:
    """Wall seconds left, counted in work rather than runs (a resumed run's short time is not a whole run's):
    `finished` and `running` hold (share of a run trained, seconds it took / has run), `todo` the shares left."""
    per_run = sum(s for _, s in finished) / max(sum(w for w, _ in finished), 1e-9)  # seconds for a whole run
    left = sum(todo) * per_run + sum(max(0.0, w * per_run - s) for w, s in running)
    return left / max(1, min(jobs, len(todo) + len(running)))


def _run_all(sweep: Sweep, todo: list[_Run], report_to: str, jobs: int, gpus: int) -> int:
    """`jobs` runs at a time (each on its own GPU when there are GPUs), with progress; returns the failures."""
    failed, finished = 0, []
    running: dict[subprocess.Popen, tuple] = {}  # process: (run, job slot, log file, start time, work share)
    free = list(range(jobs))
    while todo or running:
        while todo and free:
            run, slot = todo.pop(0), free.pop(0)
            env = dict(os.environ, WANDB_RUN_GROUP=sweep.name, **{LAUNCHED_BY: str(os.getpid()), SWEEP: sweep.name})
            if gpus:  # one run per GPU
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            elif jobs > 1:
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
            work = _work_left(run.folder)
            run.folder.mkdir(parents=True, exist_ok=True)
            # One job at a time keeps the run's own progress bar on the terminal; parallel runs log to files.
            log = open(run.folder / "train.log", "a") if jobs > 1 else None
            running[subprocess.Popen(command(sweep, run, report_to), env=env, stdout=log, stderr=log)] = (
                run, slot, log, time.time(), work)
            print(f"  {run.name}: started" + (f" (log: {run.folder / 'train.log'})" if log else ""), flush=True)
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            run, slot, log, start, work = running.pop(proc)
            free.append(slot)
            if log:
                log.close()
            now, outcome = time.time(), _outcome(run, proc.returncode)
            # What a failed, stopped or diverged run trained is read off its last checkpoint.
            finished.append((work if outcome.startswith("finished") else work - _work_left(run.folder), now - start))
            failed += outcome.startswith(("failed", "stopped"))
            eta = eta_seconds(finished, [_work_left(r.folder) for r in todo],
                              [(w, now - t) for _, _, _, t, w in running.values()], jobs)
            print(f"  {run.name}: {outcome} in {now - start:.0f} s | {len(todo) + len(running)} to go, "
                  f"about {eta / 60:.0f} min left", flush=True)
    return failed
