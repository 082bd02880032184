"""`largebatch report RUNS_DIR`: the paper's evidence from a folder of sweeps, as report.md and report.html.

RUNS_DIR holds one folder per sweep (as `largebatch sweep` writes them: a `sweep.yaml` and one folder
per run). A run's error is the median of its evaluations in the last 1/18 of training, the paper's
"median of the last 5 of 90 epochs" (evaluations after epoch 85 of 90); groups of seeds give mean ± std. The baseline is the batch-size
sweep's runs at the base batch (256); a batch size "holds" when its mean error is within the
baseline's band: baseline mean + max(2 std, tolerance).
"""
from __future__ import annotations

import collections
import dataclasses
import html
import math
import re
import statistics
from pathlib import Path

from ..errors import UserError
from ..training.config import Config
from ..training.metrics import final_error, read_metrics, read_summary
from ..training.runfolder import DIVERGED, EPOCH, FINISHED, SUMMARY, TRAIN_ERROR, RunFolder
from ..training.noise import critical_batch
from . import figures, steps
from .sweep import load_sweep

TITLES = {"warmup": "Warmup", "bn": "BatchNorm statistics", "wd_scaling": "Weight decay",
          "base_lr": "Learning-rate sensitivity", "momentum_form": "Momentum form", "optimizer": "Optimizer",
          "lr_scaling": "Scaling rule", "zero_init_last": "Zero-γ init", "bn_batch": "BN group size n",
          "global_batch": "minibatch size"}
SEEDS = 5  # the paper's seeds per point: fewer are flagged
# The paper's top-1 error at kn = 8k (ImageNet, ResNet-50, mean ± std of 5 where it gives one) for the options its
# tables vary: Table 1 (warmup), Table 2a (rate, scaling rule), Table 2b (zero-γ). Its kn = 256 baseline: 23.60.
PAPER_8K = {"warmup": {"none": "24.84 ± 0.37", "constant": "25.88 ± 0.56", "gradual": "23.74 ± 0.09"},
            "base_lr": {0.05: "24.27", 0.1: "23.74", 0.2: "24.05"},
            "lr_scaling": {"none": "41.67", "sqrt": "26.22", "linear": "23.74 ± 0.09"},
            "zero_init_last": {False: "24.11 ± 0.07", True: "23.74 ± 0.09"}}


@dataclasses.dataclass
class Run:
    folder: Path
    config: dict
    status: str  # finished | diverged
    evals: list[dict]
    b_simple: float = math.nan  # the noise scale at the peak rate (runs with accumulation log it)

    @property
    def error(self) -> float:
        """Median test error of the evaluations in the last 1/18 of training (metrics.final_error)."""
        return final_error(self.evals)


@dataclasses.dataclass
class Group:
    label: dict  # the varying options (not the seed) and their values
    runs: list[Run]  # those that ended (finished or diverged)
    expected: int = 0  # the runs the sweep asks for here, one per seed

    @property
    def unfinished(self) -> int:
        return max(0, self.expected - len(self.runs))

    @property
    def seeds(self) -> str:
        return f"{len(self.runs)} of {self.expected}" if self.unfinished else str(len(self.runs))

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == FINISHED]

    @property
    def mean(self) -> float:
        return statistics.mean(r.error for r in self.ok) if self.ok else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(r.error for r in self.ok) if len(self.ok) > 1 else math.nan

    @property
    def train_mean(self) -> float:
        return statistics.mean(r.evals[-1][TRAIN_ERROR] for r in self.ok) if self.ok else math.nan

    @property
    def b_simple(self) -> float:
        values = [r.b_simple for r in self.ok if math.isfinite(r.b_simple)]
        return statistics.mean(values) if values else math.nan

    def cell(self, unit: str = "", spread: bool = False) -> str:
        """Mean ± std in percent, as the paper's tables; diverged and unfinished seeds said, not averaged in.
        `unit` (e.g. "%") goes after the number, before what is said about the seeds; with `spread`, the seeds'
        count and min–max too (for tables without a column of their own for them)."""
        diverged = len(self.runs) - len(self.ok)
        notes = [f"{self.unfinished} of {self.expected} seeds unfinished"] if self.unfinished else []
        if not self.ok:
            return "diverged" + (f" ({notes[0]})" if notes else "")
        notes = ([f"{diverged} of {len(self.runs)} diverged"] if diverged else []) + notes
        if spread:
            notes.insert(0, f"{self.low_high}, {len(self.ok)} seeds" if len(self.ok) > 1 else "1 seed")
        text = f"{100 * self.mean:.2f}" + (f" ± {100 * self.std:.2f}" if len(self.ok) > 1 else "") + unit
        return text + (f" ({'; '.join(notes)})" if notes else "")

    @property
    def low_high(self) -> str:
        """The seeds' lowest and highest error in percent, "6.76–7.08"."""
        errors = [100 * r.error for r in self.ok]
        return f"{min(errors):.2f}–{max(errors):.2f}"

    @property
    def spread(self) -> str:
        """The seeds' count, and their lowest and highest error in percent when there are several."""
        return self.seeds + (f" ({self.low_high})" if len(self.ok) > 1 else "")

    def curve(self) -> tuple[list[float], list[float]]:
        """Training error per evaluation, averaged over the seeds that finished."""
        runs = self.ok or self.runs
        n = min(len(r.evals) for r in runs)
        return ([e[EPOCH] for e in runs[0].evals[:n]],
                [statistics.mean(r.evals[i][TRAIN_ERROR] for r in runs) for i in range(n)])


@dataclasses.dataclass
class SweepResult:
    name: str
    varying: list[str]  # option names (underscored) that vary, seed excluded
    groups: list[Group]
    unfinished: list[str] = dataclasses.field(default_factory=list)  # "<run> (why)": runs left out of the tables

    def constant(self, key):
        values = {r.config[key] for g in self.groups for r in g.runs}
        return values.pop() if len(values) == 1 else None


def load_run(folder: Path) -> Run | str:
    """The run in `folder`, or why it is not in the report (not started, still running or stopped, damaged)."""
    run = RunFolder(folder)
    if not run.started():
        return "not started"
    summary = read_summary(folder)
    if summary is None:  # still running, interrupted or damaged: `largebatch sweep` again finishes it
        return "not finished" if not run.summary.is_file() else f"its {SUMMARY} is damaged"
    steps, evals = read_metrics(run.metrics)
    status = summary.status
    if not evals and status != DIVERGED:
        return "finished without an evaluation"
    # Options added since the run was written are at their defaults: what the code that wrote it did.
    config = dataclasses.asdict(Config()) | run.read_config()
    return Run(folder, config, status, evals, critical_batch(steps)[0])


def load_sweeps(runs_dir: Path, names: list[str] | None = None) -> list[SweepResult]:
    """Every sweep folder in `runs_dir` (or `runs_dir` itself), or those named, its runs grouped by the options
    that vary."""
    folders = sorted(p.parent for p in runs_dir.glob("*/sweep.yaml")) or (
        [runs_dir] if (runs_dir / "sweep.yaml").is_file() else [])
    if not folders:
        raise UserError(f"{runs_dir} holds no sweep folders (<sweep>/sweep.yaml, as `largebatch sweep` writes "
                        f"them); run e.g. largebatch sweep recipes/sweeps/batch_size.yaml --out {runs_dir}")
    if names:
        missing = sorted(set(names) - {f.name for f in folders})
        if missing:
            raise UserError(f"--sweeps {' '.join(missing)}: no such sweep in {runs_dir} (it has "
                            f"{', '.join(f.name for f in folders)})")
        folders = [f for f in folders if f.name in names]
    results = []
    for folder in folders:
        sweep = load_sweep(folder / "sweep.yaml")
        varying = sweep.compared
        groups: dict[tuple, Group] = {}
        asked, unfinished = collections.Counter(), []
        names = {p.replace("-", "_"): p for p in sweep.parameters}
        for params in sweep.runs:
            cell = tuple(params[names[k]] for k in varying)
            asked[cell] += 1
            run = load_run(folder / sweep.run_name(params))
            if isinstance(run, str):
                unfinished.append(f"{sweep.run_name(params)} ({run})")
                continue
            groups.setdefault(cell, Group({k: run.config[k] for k in varying}, [])).runs.append(run)
        for cell, group in groups.items():
            group.expected = asked[cell]
        if groups:
            results.append(SweepResult(sweep.name, varying, list(groups.values()), unfinished))
    return results


def batch_sweep(sweeps: list[SweepResult]) -> SweepResult | None:
    return next((s for s in sweeps if s.varying == ["global_batch"]), None)


def baseline_of(sweeps: list[SweepResult]) -> Group | None:
    sweep = batch_sweep(sweeps)
    if sweep is None:
        return None
    return next((g for g in sweep.groups if g.label["global_batch"] == g.runs[0].config["base_batch"]), None)


def match_band(base_errors: list[float], tolerance: float) -> float:
    """How far above the baseline's mean test error a run may land and still match it: twice the spread (std)
    of the baseline's seeds, at least `tolerance` (all of it for one seed). `largebatch compare` uses it too."""
    return max(2 * statistics.stdev(base_errors) if len(base_errors) > 1 else 0.0, tolerance)


def scaling_limit(sweep: SweepResult, base: Group, tolerance: float) -> tuple[Group | None, Group | None, float]:
    """(largest batch that holds with every smaller one holding too, the first that does not, band)."""
    band = match_band([r.error for r in base.ok], tolerance)
    holds, breaks = None, None
    for g in sorted(sweep.groups, key=lambda g: g.label["global_batch"]):
        if g.ok and g.mean <= base.mean + band and len(g.ok) == len(g.runs):
            holds = g
        else:
            breaks = g
            break
    return holds, breaks, band


# ---- figures -------------------------------------------------------------------------------------

def plot_error_vs_batch(sweep: SweepResult, base: Group | None, band: float, out: Path) -> Path:
    groups = sorted(sweep.groups, key=lambda g: g.label["global_batch"])
    baseline = None if base is None else (f"baseline B={base.label['global_batch']}", 100 * base.mean, 100 * band)
    return figures.error_vs_batch([g.label["global_batch"] for g in groups],
                                  [_batch(g.label["global_batch"]) for g in groups],
                                  [100 * g.mean if g.ok else None for g in groups],
                                  [100 * g.std if len(g.ok) > 1 else 0 for g in groups], baseline, out)


def plot_curves(sweep: SweepResult, base: Group | None, out: Path) -> Path:
    """One panel per group: its training error over epochs laid over the baseline's."""
    panels = [(_label(g.label), *_pct(g.curve())) for g in sweep.groups if g is not base]
    baseline = None if base is None else (f"baseline B={base.label['global_batch']}", *_pct(base.curve()))
    return figures.curves_over_baseline(panels, baseline, out)


def _pct(curve):
    return curve[0], [100 * v for v in curve[1]]


def _batch(b: int) -> str:
    return f"{b // 1024}k" if b >= 1024 and b % 1024 == 0 else str(b)


def _label(label: dict) -> str:
    return ", ".join(f"B={_batch(v)}" if k == "global_batch" else f"{k.replace('_', '-')}={v}"
                     for k, v in label.items())


# ---- the document --------------------------------------------------------------------------------

def build(runs_dir: Path, out: Path, tolerance: float = 0.005, names: list[str] | None = None) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", file, alt)."""
    sweeps = load_sweeps(runs_dir, names)
    base = baseline_of(sweeps)
    c = (base or sweeps[0].groups[0]).runs[0].config
    bn = f"ghost n = {c['bn_batch']}" if c["bn"] == "ghost" else c["bn"]
    blocks = [("h1", f"Large-minibatch results: {c['dataset']}, {c['model']}"),
              ("p", f"Setting: {c['epochs']:g} epochs; η = {c['base_lr']:g} × B / {c['base_batch']}; "
                    f"{c['warmup']} warmup over {c['warmup_epochs']:g} epochs when B > {c['base_batch']}; "
                    f"{c['schedule']} decay; BatchNorm {bn}; weight decay {c['weight_decay']:g}. The runs of "
                    f"each sweep differ only in the options of its table (and the seed).")]
    bsweep = batch_sweep(sweeps)
    if bsweep is not None and base is not None:
        holds, breaks, band = scaling_limit(bsweep, base, tolerance)
        blocks += [("h2", "How far can I scale?"), ("p", _verdict(base, holds, breaks, band))]
        measured = [g for g in bsweep.groups if math.isfinite(g.b_simple)]
        if measured:
            blocks.append(("p", "Gradient noise scale B_simple = tr(Σ)/|G|² at the peak learning rate (McCandlish "
                                "et al.'s estimate of the critical batch), measured in the runs with accumulation: "
                                + ", ".join(f"{g.b_simple:.0f} at B = {_batch(g.label['global_batch'])}"
                                            for g in measured) + "."))
        img = plot_error_vs_batch(bsweep, base, band, out / "error_vs_batch.png")
        blocks.append(("img", img.name, "test error against global minibatch size"))
        blocks += _steps_section(bsweep, base, base.mean + tolerance, out)
    for sweep in sweeps:
        if sweep.varying == ["epochs", "global_batch"]:
            blocks += _budget_section(sweep, tolerance, bsweep.constant("epochs") if bsweep else None)
        elif len(sweep.varying) == 2 and "global_batch" in sweep.varying:
            blocks += _pivot_section(sweep, base, out)
        else:
            blocks += _sweep_section(sweep, base, sweep is bsweep, out)
        if sweep.unfinished:
            blocks.append(("p", f"Not in the {sweep.name} numbers above, {len(sweep.unfinished)} run(s): "
                                f"{', '.join(sweep.unfinished)}; `largebatch sweep` again finishes them."))
    blocks.append(("p", f"Each run's error is the median of its test-set evaluations in the last 1/18 of "
                        f"training (the paper's last 5 of 90 epochs); ± is the standard deviation over seeds. "
                        f"A batch size holds when its mean is at most the baseline's mean plus max(2 std, "
                        f"{100 * tolerance:g} points). Made by `largebatch report` from the runs in {runs_dir}."))
    return blocks


def _verdict(base: Group, holds: Group | None, breaks: Group | None, band: float) -> str:
    b0 = f"the B = {base.label['global_batch']} baseline ({base.cell('%')} test error)"
    if holds is None:
        return f"**No batch size holds**: even the smallest is worse than {b0} by more than {100 * band:.2f} points."
    if holds is base:
        text = (f"**Linear scaling + warmup holds up to B = {holds.label['global_batch']}**, the baseline itself "
                f"({base.cell('%')} test error): no larger batch stays within {100 * band:.2f} points of it.")
    else:
        text = (f"**Linear scaling + warmup holds up to B = {holds.label['global_batch']}**: {holds.cell('%')} "
                f"test error against {b0}, within {100 * band:.2f} points.")
    if breaks is None:
        return text + " It holds at every batch size in the sweep: try larger ones to find the limit."
    if not breaks.ok:
        return text + f" At B = {breaks.label['global_batch']} training diverged."
    return text + (f" At B = {breaks.label['global_batch']} it breaks: {breaks.cell('%')} "
                   f"(+{100 * (breaks.mean - base.mean):.2f} points).")


def section_title(name: str, varying: list[str], batch: int | None) -> str:
    """A sweep's heading from the options it varies (seed excluded) and its global batch when that is fixed."""
    title = ("Error against minibatch size" if varying == ["global_batch"] else
             " / ".join(TITLES.get(k, k.replace("_", "-")) for k in varying) or name)
    return title + (f" at B = {_batch(batch)}" if batch is not None else "")


def _sweep_section(sweep: SweepResult, base: Group | None, is_batch: bool, out: Path) -> list[tuple]:
    title = section_title(sweep.name, sweep.varying, sweep.constant("global_batch"))
    noise = any(math.isfinite(g.b_simple) for g in sweep.groups)
    header = ["", "kn", "η", *[k.replace("_", "-") for k in sweep.varying if k != "global_batch"],
              "test error %", "Δ vs baseline", "train error %", "seeds (min–max %)"] + (["B_simple"] if noise else [])
    rows = []
    for g in ([base] if base is not None and not is_batch else []) + sweep.groups:
        cfg = g.runs[0].config
        rows.append(["baseline" if g is base else "", _batch(cfg["global_batch"]), f"{cfg['peak_lr']:.3g}",
                     *[str(cfg[k]) if g is not base else "" for k in sweep.varying if k != "global_batch"],
                     g.cell(), f"{100 * (g.mean - base.mean):+.2f}" if base is not None and g.ok else "",
                     f"{100 * g.train_mean:.2f}" if g.ok else "", g.spread]
                    + ([f"{g.b_simple:.0f}" if math.isfinite(g.b_simple) else ""] if noise else []))
    few = [g for g in sweep.groups if len(g.ok) < SEEDS]
    note = ([("p", f"Fewer than {SEEDS} seeds (the paper's {SEEDS}): "
                   + ", ".join(f"{_label(g.label)} ({len(g.ok)})" for g in few)
                   + "; their ± understates the spread, and a verdict on them can change with more.")] if few else [])
    img = plot_curves(sweep, base, out / f"curves_{sweep.name}.png")
    return [("h2", title), ("table", header, rows), *note,
            ("img", img.name, f"training error over epochs, {sweep.name}, against the baseline")]


def _steps_section(sweep: SweepResult, base: Group, target: float, out: Path) -> list[tuple]:
    """Steps to result (steps.py): the optimizer steps each batch needs to first reach `target`, against the
    perfect-scaling line through the smallest batch that reached it."""
    groups = sorted(sweep.groups, key=lambda g: g.label["global_batch"])
    batches = [g.label["global_batch"] for g in groups]
    stats = [steps.summarize([steps.steps_to_target(r.evals, r.config["steps_per_epoch"], target) for r in g.ok])
             for g in groups]
    perfect = steps.perfect_scaling(batches, [m for m, *_ in stats])
    rows = []
    for g, (mean, lo, hi, missed), ideal in zip(groups, stats, perfect or [math.nan] * len(groups)):
        reached = len(g.ok) - missed
        rows.append([_batch(g.label["global_batch"]), f"{mean:.0f}" if reached else "never",
                     f"{lo}–{hi}" if reached > 1 else "", f"{reached} of {len(g.ok)}",
                     f"{ideal:.0f}" if math.isfinite(ideal) else "",
                     f"{ideal / mean:.2f}" if reached and math.isfinite(ideal) else ""])
    img = figures.steps_vs_batch(batches, [_batch(b) for b in batches],
                                 [(m, lo, hi) if math.isfinite(m) else None for m, lo, hi, _ in stats], perfect,
                                 f"{100 * target:.2f}% test error", out / "steps_vs_batch.png")
    return [("h2", "Steps to result"),
            ("p", f"Optimizer steps until a run's evaluation first shows at most {100 * target:.2f}% test error "
                  f"(the baseline's {100 * base.mean:.2f}% + {100 * (target - base.mean):.2f} points), as Shallue "
                  f"et al. 2019 measure data parallelism: where doubling B halves the steps (efficiency 1), twice "
                  f"the devices train twice as fast; where the steps stop falling, more devices buy nothing. Read "
                  f"to the evaluation interval; geometric mean over the seeds that reached it."),
            ("table", ["kn", "steps to target", "seeds' min–max", "seeds that reached it", "perfect scaling",
                       "efficiency"], rows),
            ("img", img.name, "optimizer steps to the target error against the global batch, log-log")]


def _pivot_section(sweep: SweepResult, base: Group | None, out: Path) -> list[tuple]:
    """One option at a few batch sizes, in the paper's form: a row per value of the option, the test error and
    its distance to the baseline at each batch, and the paper's number at kn = 8k where it has one."""
    option = next(k for k in sweep.varying if k != "global_batch")
    cell = {(g.label[option], g.label["global_batch"]): g for g in sweep.groups}
    values, batches = list(dict.fromkeys(v for v, _ in cell)), sorted({b for _, b in cell})
    paper = PAPER_8K.get(option, {})
    rate_varies = len({g.runs[0].config["peak_lr"] for g in sweep.groups}) > len(batches)
    rows = []
    for v in values:
        row = [str(v)]
        for b in batches:
            g = cell.get((v, b))
            rate = f" (η {g.runs[0].config['peak_lr']:.3g})" if g is not None and rate_varies else ""
            delta = f"{100 * (g.mean - base.mean):+.2f}" if g is not None and base is not None and g.ok else ""
            row += [g.cell(spread=True) + rate, delta] if g is not None else ["not run yet", ""]
        rows.append(row + ([paper.get(v, "")] if paper else []))
    header = [option.replace("_", "-"), *[h for b in batches for h in (f"B = {_batch(b)}", "Δ vs baseline")]]
    header += ["paper, kn = 8k (ImageNet)"] if paper else []
    sizes = [_batch(b) for b in batches]
    title = f"{TITLES.get(option, option)} at B = " + (f"{', '.join(sizes[:-1])} and {sizes[-1]}" if len(sizes) > 1
                                                       else sizes[0])
    intro = ("Test error % (mean ± std over seeds, then the seeds' min–max and count) and its distance in points "
             "to the baseline"
             + (f", B = {base.label['global_batch']}: {base.cell()}" if base is not None else "")
             + (" (the paper's kn = 256 baseline: 23.60 ± 0.12)." if paper else "."))
    img = plot_curves(sweep, base, out / f"curves_{sweep.name}.png")
    return [("h2", title), ("p", intro), ("table", header, rows),
            ("img", img.name, f"training error over epochs, {sweep.name}, against the baseline")]


def _budget_section(sweep: SweepResult, tolerance: float, used: float | None) -> list[tuple]:
    """Choosing the epoch budget: each small batch's test error at each budget, and whether they agree, i.e.
    every batch's mean lies within the band of that budget's base-batch runs (max(2 std, tolerance)); `used`:
    the batch-size sweep's budget, if the report has one."""
    cell = {(g.label["epochs"], g.label["global_batch"]): g for g in sweep.groups}
    budgets, batches = sorted({e for e, _ in cell}), sorted({b for _, b in cell})
    base_batch = sweep.groups[0].runs[0].config["base_batch"]
    rows, agreeing = [], []
    for epochs in budgets:
        groups, ref = [cell.get((epochs, b)) for b in batches], cell.get((epochs, base_batch))
        verdict, spread = "runs missing", ""
        if ref is not None and all(g is not None and g.ok and len(g.ok) == len(g.runs) for g in groups):
            band = match_band([r.error for r in ref.ok], tolerance)
            means = [g.mean for g in groups]
            spread = f"{100 * (max(means) - min(means)):.2f}"
            verdict = "yes" if all(abs(m - ref.mean) <= band for m in means) else "no"
            verdict += f" (band {100 * band:.2f})"
            agreeing += [epochs] if verdict.startswith("yes") else []
        rows.append([f"{epochs:g}", *[g.cell() if g is not None else "" for g in groups], spread, verdict])
    header = ["epochs", *[f"B = {_batch(b)}" for b in batches], "spread of the means (points)",
              f"agree with B = {base_batch}?"]
    verdict = (f"The shortest budget here at which the small batches agree: **{agreeing[0]:g} epochs**." if agreeing
               else "At no budget here do the small batches agree yet.")
    if used is not None:
        verdict += (" The batch-size sweep runs at it." if agreeing and used == agreeing[0]
                    else f" The batch-size sweep runs at {used:g} epochs.")
    return [("h2", "The epoch budget"),
            ("p", "Below a converged budget every larger batch loses updates it still needed, so a 'break' would "
                  "measure under-training. Test error % (mean ± std over seeds) of the small batches at each "
                  "budget; they agree when each mean is within max(2 std, "
                  f"{100 * tolerance:g} points) of the B = {base_batch} runs' mean."),
            ("table", header, rows), ("p", verdict)]


def to_markdown(blocks: list[tuple]) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            lines += [f"{'#' if kind == 'h1' else '##'} {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
        else:
            header, rows = rest
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines)


def to_html(blocks: list[tuple]) -> str:
    def inline(text):
        text = html.escape(text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text))

    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{inline(rest[0])}</{kind}>")
        elif kind == "img":
            body.append(f'<img src="{html.escape(rest[0])}" alt="{html.escape(rest[1])}">')
        else:
            header, rows = rest
            body.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
             "img{max-width:100%}p b{font-size:1.15em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>largebatch report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(runs_dir: str | Path, out: str | Path | None = None, tolerance: float = 0.005,
                 names: list[str] | None = None) -> Path:
    """report.md, report.html and their PNG figures in `out` (default: `runs_dir`), from the sweeps `names`
    (default: all in `runs_dir`); returns report.md."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder of sweeps")
    out = Path(out or runs_dir)
    blocks = build(runs_dir, out, tolerance, names)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(to_html(blocks))
    (out / "report.md").write_text(to_markdown(blocks))
    return out / "report.md"
