"""`largebatch dashboard`: the W&B views and report it builds, read as W&B would read them, against a real run.

No W&B server here: the spec is built offline (--dry-run), and the keys its panels, filters and tables read
are checked against what an offline W&B run of `largebatch sweep --report-to wandb` logged (its .wandb file).
"""
import json
import os
import re
import struct
import subprocess
import sys

import pytest
from conftest import ROOT

from largebatch.tools.cli import main

SWEEPS = ["figure1_60", "warmup_60", "rate_60", "figure1", "budget", "batch_size", "warmup", "batchnorm", "weight_decay", "lr_sensitivity", "beyond"]


def _dashboard(capsys, *args):
    """(exit status, stdout, stderr) of `largebatch dashboard --entity e --project p ARGS`."""
    try:
        main(["dashboard", "--entity", "e", "--project", "p", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _keys_read(spec) -> set[tuple[str, str]]:
    """(config|summary|history|run, key) for every key the spec's panels, filters, groupings and columns read,
    in the forms the W&B app stores them."""
    keys = set()

    def walk(node, parent=None):
        if isinstance(node, dict):
            if set(node) >= {"section", "name"} and isinstance(node["name"], str):  # filters, groupings
                keys.add((node["section"], node["name"].removesuffix(".value")))
            if node.get("viewType") == "Run History Line Plot":
                keys.update(("history", k) for k in [node["config"]["xAxis"], *node["config"]["metrics"]])
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, parent)
        elif isinstance(node, str):
            for pattern, section in ((r"config:(\w+)\.value", "config"), (r"summary:(\w+)", "summary"),
                                     (r"summary_metrics\.(\w+)", "summary")):
                if m := re.fullmatch(pattern, node):
                    keys.add((section, m[1]))
            if parent == "groupBy" and (m := re.fullmatch(r"(\w+)\.value", node)):
                keys.add(("config", m[1]))

    walk(spec)
    return keys


def test_dry_run_is_the_reports_figures_per_sweep(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = _dashboard(capsys, "--dry-run", "--report")
    assert code == 0, err
    spec = json.loads(out)
    views = {v["displayName"]: v["spec"]["section"] for v in spec["workspaces"]}
    assert list(views) == [f"largebatch: {s}" for s in SWEEPS]
    batch = views["largebatch: batch_size"]
    [section] = batch["panelBankConfig"]["sections"]
    assert section["name"] == "Error against minibatch size"
    panels = {p["viewType"]: p["config"] for p in section["panels"]}
    # Figure 1: each run on a log x-axis, and the bars grouped by batch with mean ± std over seeds.
    assert panels["Scatter Plot"]["xAxis"] == "config:global_batch.value" and panels["Scatter Plot"]["xAxisLogScale"]
    assert panels["Scatter Plot"]["yAxis"] == "summary:final_test_error"
    assert (panels["Bar Chart"]["groupBy"], panels["Bar Chart"]["groupAgg"], panels["Bar Chart"]["groupArea"]) == (
        "global_batch.value", "mean", "stddev")
    assert "max(2 std, 0.5 points)" in panels["Markdown Panel"]["value"]
    lines = [p["config"]["metrics"] for p in section["panels"] if p["viewType"] == "Run History Line Plot"]
    assert lines == [["train_error"], ["test_error"], ["noise_scale"]]
    [steps] = [p["config"] for p in section["panels"] if p["config"].get("metrics") == ["test_error"]]
    assert steps["xAxis"] == "_step" and steps["xLogScale"] and steps["yLogScale"]  # steps to result, log-log
    # The warmup view finds B = 512 runs of each warmup and both seeds, finished ones only, grouped by warmup.
    run_set = views["largebatch: warmup"]["runSets"][0]
    filters = {(f["key"]["name"], f["op"]): f["value"] for f in run_set["filters"]["filters"]}
    assert filters[("global_batch", "=")] == 512 and filters[("status", "=")] == "finished"
    assert filters[("warmup", "IN")] == ["none", "constant", "gradual"] and filters[("seed", "IN")] == [0, 1]
    assert run_set["grouping"] == [{"section": "config", "name": "warmup.value"}]
    [report] = spec["reports"]
    headings = [b["children"][0]["text"] for b in report["spec"]["blocks"] if b.get("type") == "heading"]
    assert headings == [v["panelBankConfig"]["sections"][0]["name"] for v in views.values()]


def test_without_a_key_one_line_says_how_to_log_in(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    code, _, err = _dashboard(capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: no W&B API key") and "wandb login" in err and "WANDB_API_KEY" in err


@pytest.mark.parametrize("args, expected", [
    (["--sweep", "other/proj/abc123de"], "--sweep 'other/proj/abc123de' is not a sweep of e/p"),
    (["--files", "recipes/sweeps/nope.yaml"], "sweep file recipes/sweeps/nope.yaml does not exist"),
])
def test_bad_input_is_one_line(args, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, _, err = _dashboard(capsys, "--dry-run", *args)
    assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_without_wandb_workspaces_one_line_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # makes `import wandb_workspaces` fail
    code, _, err = _dashboard(capsys, "--dry-run")
    assert code == 2 and "pip install 'largebatch[wandb]'" in err, err


# ---- against a real offline W&B run -------------------------------------------------------------------

def read_wandb_log(path) -> dict[str, dict]:
    """config, summary and history (key: last value) from an offline run's .wandb file.

    wandb ships no reader for it in this version: the file is a ':W&B' header (7 bytes), then LevelDB-style
    32 KiB blocks of records (crc32, length, type: full, first, middle, last), each a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part, out = path.read_bytes(), 7, b"", {"config": {}, "summary": {}, "history": {}}
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # a block's zero padding
            pos += left
            continue
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):  # first or middle piece of a record
            continue
        record, part = pb.Record.FromString(part), b""
        kind_of = record.WhichOneof("record_type")
        items = {"config": lambda r: r.config.update, "summary": lambda r: r.summary.update,
                 "history": lambda r: r.history.item}.get(kind_of)
        for item in items(record) if items else []:
            out[kind_of][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return out


TINY = """
name: tiny
program: recipes/fashion_mnist.py
method: grid
parameters:
  global-batch: {{values: [128]}}
  seed: {{values: [0]}}
  micro-batch: {{value: 64}}
  epochs: {{value: 1}}
  subset: {{value: 512}}
  data-dir: {{value: {data}}}
"""


@pytest.mark.slow
def test_every_key_the_dashboard_reads_is_logged_by_a_sweep_run(tmp_path, small_fmnist, capsys, monkeypatch):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY.format(data=small_fmnist))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run([sys.executable, "-m", "largebatch", "sweep", str(sweep), "--out", str(tmp_path / "out"),
                           "--report-to", "wandb"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(env, HOME=str(tmp_path / "home"), TQDM_DISABLE="1", OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [log] = (tmp_path / "out/tiny").glob("run/wandb/offline-run-*/run-*.wandb")  # nothing varies: folder run
    logged = read_wandb_log(log)
    # What groups the run: the sweep's name, and every option by its config name.
    config = logged["config"]
    assert (config["sweep"], config["global_batch"], config["seed"], config["micro_batch"]) == ("tiny", 128, 0, 64)
    assert logged["summary"]["status"] == "finished" and 0 < logged["summary"]["final_test_error"] < 1
    assert "noise_scale" in logged["history"]  # accumulation 2: the noise scale is measured

    monkeypatch.chdir(ROOT)
    code, out, err = _dashboard(capsys, "--dry-run", "--report", "--files", str(sweep),
                                "recipes/sweeps/batch_size.yaml", "recipes/sweeps/warmup.yaml")
    assert code == 0, err
    read = _keys_read(json.loads(out))
    missing = {(section, key) for section, key in read if section in logged and key not in logged[section]}
    assert not missing, missing
    assert {s for s, _ in read} == {"config", "summary", "history", "run"}  # the walk found every kind
    assert read - {(s, k) for s, k in read if s in logged} == {("run", "createdAt")}  # the runs' sort order
