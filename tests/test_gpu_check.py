"""benchmarks/gpu_check.py's CPU half: argument handling, the bare loop on a device, the split rule and the
table (fast), and the tiny CPU version of the whole check end to end (slow). Its GPU numbers are not
asserted: the targets are reported in the table."""
import argparse
import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, drift_tolerance

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NVIDIA_ROW = "NVIDIA published, ResNet-50 v1.5, 1 GPU"
COLUMNS = "| check | setting | measured | against | ratio | target | result |"


@pytest.mark.parametrize("argv, named", [
    (["--steps", "0"], "--steps"), (["--split-steps", "-3"], "--split-steps"), (["--warmup", "-1"], "--warmup"),
    (["--parts", "engine_nchw,nvjpeg"], "--parts"), (["--device", "tpu"], "--device"), (["--budget", "0"], "--budget"),
    (["--micro-batch", "20", "--device", "cpu"], "--micro-batch"), (["--size", "x"], "--size")])
def test_a_bad_argument_is_one_line_naming_it(argv, named):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: error: ") and named in lines[0], proc.stderr


def test_cpu_defaults_are_the_tiny_version():
    args = gpu_check.parse_args(["--device", "cpu"])
    assert (args.model, args.size, args.micro_batch, args.dtype, args.steps) == ("resnet_fmnist", 28, 32, "fp32", 3)
    assert args.parts == list(gpu_check.PARTS) and args.data.endswith("jpegs")
    assert gpu_check.parse_args(["--device", "cpu", "--parts", "split, decode"]).parts == ["split", "decode"]


def _cpu_results():
    """What the parts of a CPU run return (shapes as the parts write them)."""
    engine = dict(steps=3, bare=1000.0, engine=960.0, ratio=0.96, ratio_quartiles=[0.9, 1.0])
    losses = [2.3, 2.2, 2.1]
    return dict(engine_nchw=engine, engine_channels_last=dict(engine, engine=900.0, ratio=0.9),
                ghost_bn=dict(nchw=dict(plain=500.0, ghost=490.0, ratio=0.98, ratio_quartiles=[0.9, 1.0], steps=3),
                              channels_last=dict(plain=400.0, ghost=380.0, ratio=0.95, ratio_quartiles=[0.9, 1], steps=3)),
                decode=dict(images=16, batch=8, cpu_per_core=120.0),
                zero2=dict(error="exit 1: ImportError: no deepspeed"),
                split=dict(batch=64, micro=16, accumulation=4, accumulated=losses, whole=losses,
                           **gpu_check.compare_split(losses, losses, 64)))


def test_the_table_has_every_row_and_the_gpu_rows_say_not_run():
    args = gpu_check.parse_args(["--device", "cpu"])
    results = _cpu_results()
    split = results.pop("split")  # as if the budget ran out before it
    text = gpu_check.table(dict(device="CPU", mode="tiny CPU", torch="x", date="d", commit="c", seconds=1.0,
                                rows=gpu_check.build_rows(dict(results, split=split), args)))
    assert "| split invariance |" in text and "| met |" in text.split("| split invariance |")[1].splitlines()[0]
    lines = text.splitlines()
    assert all(line.count("|") == COLUMNS.count("|") for line in lines if line.startswith("| "))
    rows = gpu_check.build_rows(results, args)
    by = {(r["check"], r["setting"].split(", ")[-1]): r for r in rows}
    checks = [r["check"] for r in rows]
    assert checks.count("engine vs bare loop") == 3 and checks.count("ghost vs plain BN") == 2
    assert checks.count(NVIDIA_ROW) == len(gpu_check.NVIDIA)
    assert {"JPEG decode, `--decode gpu` (nvJPEG)", "JPEG decode, CPU (libjpeg-turbo)", "ZeRO-2, 1 process",
            "split invariance"} <= set(checks)
    nchw, cl = by[("engine vs bare loop", "NCHW")], by[("engine vs bare loop", "channels-last")]
    assert nchw["status"] == "met" and nchw["ratio"] == 0.96 and cl["status"] == "missed"
    assert by[("engine vs bare loop", "compiled")]["status"] == "not run: no GPU"
    for r in rows:
        if r["check"].startswith("NVIDIA") or "nvJPEG" in r["check"]:
            assert r["status"] == "not run: no GPU" and r["measured"] == "" and r["ratio"] is None
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in r["values"].values()), r
    zero = next(r for r in rows if r["check"] == "ZeRO-2, 1 process")
    assert zero["status"] == "failed: exit 1: ImportError: no deepspeed"
    split = next(r for r in rows if r["check"] == "split invariance")
    assert split["status"] == "not run: out of time (--budget)"
    cpu = next(r for r in rows if r["check"] == "JPEG decode, CPU (libjpeg-turbo)")
    assert cpu["values"]["cpu_per_core"] == 120.0 and cpu["ratio"] == pytest.approx(960.0 / 120.0)
    text = gpu_check.table(dict(device="CPU", mode="tiny CPU", torch="x", date="d", commit="c", seconds=1.0, rows=rows))
    lines = text.splitlines()
    at = lines.index(COLUMNS)
    body = [line for line in lines[at + 2:] if line.startswith("|")]
    assert len(body) == len(rows) and all(line.count("|") == COLUMNS.count("|") for line in body)
    assert "| **0.960** | ≥ 0.95 | met |" in text and gpu_check.NVIDIA_URL in text


def test_the_split_row_compares_two_runs_with_the_drift_rule():
    whole = [6.9, 6.8, 6.7, 6.6]
    accumulated = [6.9 + 1e-6, 6.8 - 1e-4, 6.7, 6.6 + 0.5]
    got = gpu_check.compare_split(accumulated, whole, 256)
    assert got["tolerances"] == [drift_tolerance(256, b, k) for k, b in enumerate(whole)]
    assert got["diffs"] == pytest.approx([1e-6, 1e-4, 0, 0.5], rel=1e-6)
    assert got["max_diff"] == pytest.approx(0.5) and got["within"] is False  # 0.5 at step 3 is over the rule
    assert got["worst_step"] == 3 and got["worst_ratio"] == pytest.approx(0.5 / drift_tolerance(256, 6.6, 3))
    assert gpu_check.compare_split(whole, whole, 256)["within"] is True
    args = gpu_check.parse_args(["--device", "cpu"])
    row = next(r for r in gpu_check.build_rows(dict(split=dict(got, batch=256, micro=32)), args)
               if r["check"] == "split invariance")
    assert row["status"] == "missed" and row["values"]["max_diff"] == pytest.approx(0.5)
    assert row["ratio"] == pytest.approx(got["worst_ratio"]) and "drift rule" in row["against"]
    with pytest.raises(ValueError):
        gpu_check.compare_split(whole[:2], whole, 256)


def test_the_bare_loop_and_the_engine_train_on_the_device(tmp_path):
    """part_engine in-process at a toy size: both loops take their steps, interleaved, at a positive rate."""
    args = argparse.Namespace(device="cpu", model="resnet_fmnist", size=16, micro_batch=16, steps=2, warmup=1,
                              dtype="fp32", data=str(tmp_path))
    result = gpu_check.part_engine(args, channels_last=False, compile=False)
    assert result["steps"] == 2 and result["bare"] > 0 and result["engine"] > 0 and result["ratio"] > 0
    assert result["ratio_quartiles"][0] <= result["ratio_quartiles"][1]


@pytest.mark.slow
def test_the_cpu_version_end_to_end(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    text = (out / "gpu_check.md").read_text()
    assert COLUMNS in text and report["mode"] == "tiny CPU"
    rows = {(r["check"], r["setting"].split(", ")[-1]): r for r in report["rows"] if r["check"] != NVIDIA_ROW}
    assert len(report["rows"]) == len(rows) + len(gpu_check.NVIDIA) == 9 + len(gpu_check.NVIDIA)
    lines = text.splitlines()
    body = [line for line in lines[lines.index(COLUMNS) + 2:] if line.startswith("|")]
    assert len(body) == len(report["rows"]) and all(line.count("|") == COLUMNS.count("|") for line in body)
    for r in report["rows"]:
        assert not r["status"].startswith("failed"), r
        assert all(isinstance(v, (int, float)) for v in r["values"].values()), r
        if "nvJPEG" in r["check"] or r["check"].startswith("NVIDIA") or r["setting"].endswith("compiled"):
            assert r["status"] == "not run: no GPU" and f"| {r['status']} |" in text
        else:
            assert r["status"] in ("met", "missed", "ran"), r
    for layout in ("NCHW", "channels-last"):
        assert rows[("engine vs bare loop", layout)]["values"]["bare"] > 0
        assert rows[("engine vs bare loop", layout)]["values"]["engine"] > 0
    split, part = rows[("split invariance", "fp32")], report["parts"]["split"]
    assert len(part["accumulated"]) == len(part["whole"]) == 3  # two runs, every step logged
    assert split["values"]["max_diff"] == max(abs(a - b) for a, b in zip(part["accumulated"], part["whole"]))
    k = split["values"]["worst_step"]
    assert split["values"]["worst_tolerance"] == drift_tolerance(64, part["whole"][k], k)
    assert split["status"] == "met"  # the same examples and BN groups on one CPU: within float rounding
    assert report["parts"]["zero2"]["mode"] == "DeepSpeed ZeRO stage 2"
