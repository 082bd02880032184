"""`largebatch dashboard`: what `largebatch report` shows, as W&B workspace views and a W&B report.

Each sweep file becomes one saved view of the project's workspace, named "largebatch: <sweep>" (a W&B
workspace passes all its panels through one run set, so sweeps that group runs differently need a view
each) and, with --report, one section of a W&B report. A sweep's runs are found by their config, as
`largebatch report` finds them by their options: every option that any of the sweeps sets must have this
sweep's value, so a run one sweep reuses from another (the warmup sweep's gradual runs are the batch-size
sweep's B = 512 runs) counts in both, however it was launched. Only finished runs count (the summary's
`status`, as the report leaves diverged runs out of its means); `--sweep ID` keeps only the runs of those
W&B sweeps. The panels read the names the engine logs (training/runfolder.py) and the options' config keys.

What W&B draws differently from the report: the error is a fraction, not a percentage; the log x-axis is
labelled in powers of ten; the baseline band (mean + max(2 std, 0.5 points)) is no panel W&B has, so a note
says how to read it off the bars; the curves of all groups share one plot instead of one panel per group.
"""
from __future__ import annotations

import dataclasses
import json
import re

from ..errors import UserError
from ..training import runfolder  # the names the engine logs
from ..training.config import Config, parse_config
from ..training.recipes import recipe_of
from .report import section_title
from .sweep import Sweep, load_sweep, wandb_args

# The Fashion-MNIST sweeps: `make results-60-epochs` runs the first three (Figure 1, Table 1 and the rate rule
# where 8x holds), `make results` the next two (at 10 epochs), `make results-6-epochs` the short-budget rest.
SWEEP_FILES = [f"recipes/sweeps/{name}.yaml" for name in
               ("figure1_60", "warmup_60", "rate_60", "figure1", "budget", "batch_size", "warmup", "batchnorm", "weight_decay",
                "lr_sensitivity", "beyond")]
OPTIONS = {f.name for f in dataclasses.fields(Config)}
PINNED = {"model"}  # besides the sweeps' own options: runs of another model are another experiment
MAX_RUNS = 100  # runs drawn per plot: more than any sweep file's grid (the ImageNet one has 30)
PROJECT_ID_AT_SAVE = "<the project's id, looked up when saved>"
INSTALL = "pip install 'largebatch[wandb]' (or pip install wandb-workspaces)"


@dataclasses.dataclass
class View:
    """One sweep's panels and the filter that finds its runs."""
    sweep: Sweep
    title: str
    compared: list[str]  # config keys the sweep compares (global_batch for the batch-size sweep)
    filters: object  # a wandb_workspaces.expr filter

    @property
    def is_batch(self) -> bool:
        return self.compared == ["global_batch"]


def option(name: str) -> str:
    """`name`, checked to be a training option (training/config.py), so a key of every run's config."""
    if name not in OPTIONS:
        raise ValueError(f"{name} is not a training option (training/config.py)")
    return name


def sweep_ids(ids: list[str], entity: str, project: str) -> list[str]:
    """The ids as W&B stores them: `abc123de` or the `entity/project/abc123de` that `wandb agent` takes."""
    out = []
    for given in ids:
        *path, sweep_id = given.split("/")
        if (path and path != [entity, project]) or not re.fullmatch(r"[A-Za-z0-9]+", sweep_id):
            raise UserError(f"--sweep {given!r} is not a sweep of {entity}/{project}; give the id `wandb sweep` "
                            f"printed, e.g. --sweep abc123de or --sweep {entity}/{project}/abc123de")
        out.append(sweep_id)
    return out


def build_views(files: list[str], ids: list[str]) -> list[View]:
    """One view per sweep file, in the files' order."""
    from wandb_workspaces import expr

    sweeps = [load_sweep(f) for f in files]
    pinned = sorted(PINNED | {k.replace("-", "_") for s in sweeps for k in s.parameters})
    views = []
    for sweep in sweeps:
        defaults = recipe_of(sweep.program)[1].defaults
        try:
            configs = [dataclasses.asdict(parse_config(wandb_args(p), **defaults)) for p in sweep.runs]
        except UserError as e:
            raise UserError(f"sweep {sweep.file}: {e}") from None
        clauses = []
        for key in map(option, pinned):
            values = list(dict.fromkeys(c[key] for c in configs))
            clauses.append(expr.Config(key) == values[0] if len(values) == 1 else expr.Config(key).isin(values))
        clauses.append(expr.Summary(runfolder.STATUS) == runfolder.FINISHED)
        if ids:
            clauses.append(expr.Metric("Sweep").isin(ids))
        batches = {c["global_batch"] for c in configs}
        title = section_title(sweep.name, sweep.compared, batches.pop() if len(batches) == 1 else None)
        views.append(View(sweep, title, sweep.compared, expr.And(*clauses)))
    return views


def panels(view: View) -> list:
    """The report's figures for one sweep: its final errors grouped, its training curves, and the noise scale."""
    import wandb_workspaces.reports.v2 as wr

    final = wr.SummaryMetric(runfolder.FINAL_TEST_ERROR)
    # One option: the panels group by it. Several (budget.yaml): the run set's grouping, by all of them.
    group = wr.Config(option(view.compared[0])) if len(view.compared) == 1 else None
    grouped = dict(groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stddev") if group else {}
    what = "global batch" if view.is_batch else ", ".join(k.replace("_", "-") for k in view.compared)
    out = [wr.BarPlot(title=f"final test error by {what} (mean ± std over seeds)", metrics=[final],
                      orientation="v", title_x=what, title_y="test error", max_runs_to_show=MAX_RUNS, **grouped),
           wr.LinePlot(title=f"training error over epochs, by {what}", x=runfolder.EPOCH, y=[runfolder.TRAIN_ERROR],
                       title_x="epoch", title_y="training error", max_runs_to_show=MAX_RUNS, **grouped)]
    if view.is_batch:
        out[1:1] = [wr.ScatterPlot(title="final test error against the global batch (each run)",
                                   x=wr.Config(option("global_batch")), y=final, log_x=True),
                    wr.MarkdownPanel(markdown=BAND_NOTE)]
        # Steps to result (Shallue et al. 2019): where each batch's curve first crosses a target error; the
        # steps a panel can read off, since W&B cannot compute a first crossing (`largebatch report` does).
        out.append(wr.LinePlot(title="test error against optimizer steps, by global batch: steps to a target "
                                     "error halve per doubling of B where scaling is perfect",
                               x="_step", y=[runfolder.TEST_ERROR], log_x=True, log_y=True, title_x="optimizer step",
                               title_y="test error", max_runs_to_show=MAX_RUNS, **grouped))
        out.append(wr.LinePlot(title="gradient noise scale B_simple over training (runs with accumulation)",
                               x=runfolder.EPOCH, y=[runfolder.NOISE_SCALE], log_y=True, title_x="epoch",
                               title_y="B_simple", max_runs_to_show=MAX_RUNS, **grouped))
    return out


BAND_NOTE = (
    "**Reading Figure 1.** Each run's error is `final_test_error`: the median of its test evaluations in the "
    "last 1/18 of training (the paper's last 5 of 90 epochs). A batch size *holds* when its mean is at most "
    "the baseline's (B = base_batch, 256) mean + max(2 std, 0.5 points), the band `largebatch report` draws; "
    "W&B has no panel for a band computed from a group, so read it off the baseline's bar. Only finished "
    "runs are shown: a diverged run has `status` diverged in its summary.")


def columns(view: View) -> list[str]:
    """The runs table: the options compared, the seed, the batch and rate, and the errors (the report's table)."""
    keys = list(dict.fromkeys([*view.compared, "global_batch", "seed"]))
    return ([f"config:{k}.value" for k in keys] + ["config:peak_lr.value"]
            + [f"summary:{k}" for k in (runfolder.FINAL_TEST_ERROR, runfolder.TRAIN_ERROR)])


def workspace(view: View, entity: str, project: str):
    """The sweep's saved view of the project's workspace: one section of its panels, its runs grouped."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    return ws.Workspace(
        entity=entity, project=project, name=f"largebatch: {view.sweep.name}",
        sections=[ws.Section(name=view.title, panels=panels(view), is_open=True)],
        settings=ws.WorkspaceSettings(max_runs=MAX_RUNS),
        runset_settings=ws.RunsetSettings(filters=view.filters, groupby=[expr.Config(option(k)) for k in view.compared],
                                          pinned_columns=columns(view)))


def report(views: list[View], entity: str, project: str, offline: bool = False):
    """One W&B report with every sweep's section, each with its own run set, as `largebatch report` lays out.
    offline: its run sets name no project, since wandb-workspaces asks the server for a named project's id
    (`spec` writes the project into the JSON instead)."""
    import wandb_workspaces.reports.v2 as wr

    blocks = [wr.P("The paper's evidence (Goyal et al. 2017) from this project's runs, made by `largebatch "
                   "dashboard`; `largebatch report` draws the same from the run folders.")]
    for view in views:
        runset = wr.Runset(entity=entity, project="" if offline else project, name=view.sweep.name, filters=view.filters,
                           groupby=[f"config.{option(k)}" for k in view.compared], pinned_columns=columns(view))
        blocks += [wr.H2(view.title), wr.P(f"Sweep file {view.sweep.file}: runs whose options match it."),
                   wr.PanelGrid(runsets=[runset], panels=panels(view))]
    return wr.Report(entity=entity, project=project, title="Large-minibatch results", blocks=blocks)


def spec(objects: list, entity: str, project: str) -> dict:
    """The views (and the report, built `offline`) as the JSON W&B stores: what --dry-run prints, made without
    the network. A report's run set stores its project's internal id, which W&B looks up when it saves; here
    the id is PROJECT_ID_AT_SAVE."""
    dump = [o._to_model().model_dump(by_alias=True, exclude_none=True, mode="json") for o in objects]
    named = {"name": project, "entityName": entity, "id": PROJECT_ID_AT_SAVE}
    for o, d in zip(objects, dump):
        for runset in _runsets(d) if hasattr(o, "blocks") else []:
            runset["project"] = named
    return {"workspaces": [d for o, d in zip(objects, dump) if not hasattr(o, "blocks")],
            "reports": [d for o, d in zip(objects, dump) if hasattr(o, "blocks")]}


def _runsets(tree) -> list[dict]:
    """Every run set in a report's JSON, wherever its panel grids nest them."""
    if isinstance(tree, list):
        return [r for item in tree for r in _runsets(item)]
    if not isinstance(tree, dict):
        return []
    return list(tree.get("runSets", [])) + [r for k, v in tree.items() if k != "runSets" for r in _runsets(v)]


def logged_in(entity: str, project: str, ids: list[str]) -> None:
    """The user's W&B key works and each --sweep is a sweep of entity/project; else a UserError saying what to do."""
    import wandb

    try:
        api = wandb.Api()
    except wandb.errors.UsageError:
        raise UserError("no W&B API key here: run `wandb login` (or set WANDB_API_KEY), then this command again; "
                        "--dry-run prints the dashboard without one") from None
    for sweep_id in ids:
        try:
            api.sweep(f"{entity}/{project}/{sweep_id}")
        except Exception as e:  # W&B's client raises several types for "no such sweep" and network failures
            raise UserError(f"--sweep {sweep_id}: no such sweep in {entity}/{project} ({type(e).__name__}); give "
                            f"the id `wandb sweep` printed, and the entity and project it was created in") from None


def save(objects: list, entity: str, project: str) -> list[str]:
    """Save each view and report with the user's key; returns their URLs."""
    urls = []
    for o in objects:
        try:
            o.save()
        except Exception as e:  # whatever W&B answers, the user needs the entity and project named
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise UserError(f"W&B did not save the dashboard to {entity}/{project} ({type(e).__name__}: {first}); "
                            f"check --entity (one your key belongs to) and --project") from None
        urls.append(o.url)
    return urls


def dashboard(entity: str, project: str, ids: list[str], files: list[str], with_report: bool,
              dry_run: bool) -> str:
    """Build the views (and the report); return them as JSON (dry_run) or save them and return their URLs."""
    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        raise UserError(f"largebatch dashboard needs the wandb-workspaces package: {INSTALL}") from None
    ids = sweep_ids(ids, entity, project)
    views = build_views(files or SWEEP_FILES, ids)
    objects = [workspace(v, entity, project) for v in views]
    if with_report:
        objects.append(report(views, entity, project, offline=dry_run))
    if dry_run:
        return json.dumps(spec(objects, entity, project), indent=1)
    logged_in(entity, project, ids)
    return "\n".join(save(objects, entity, project))
