"""A smoke run of `make bench`: every benchmark script runs and reports sane numbers (not timed)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

from largebatch.tools import plan

pytestmark = pytest.mark.slow  # trains: see `pytest -m "not slow"` for the fast tier


def test_bench_smoke(tmp_path, fmnist_dir):
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(c["processes"], c["accumulation"]) for c in results["cases"]] == [(1, 1), (2, 1)]
    for c in results["cases"]:
        assert c["bare"] > 0 and c["engine"] > 0 and c["steps"] == 2
        assert 0 < c["ratio_quartiles"][0] <= c["ratio_quartiles"][1] <= c["ratio_quartiles"][2]
    comm = results["allreduce"]
    assert comm["processes"] == 2 and comm["bandwidth_MBps"] > 0 and len(comm["allreduce"]) == 3
    w, net = plan.load_calibration(tmp_path / "calibration.json")
    assert w.params == 310_226 and w.forward > 0 and w.backward > 0 and net.gpus_per_server == 1
    assert "| 2 | 1 | ghost |" in (tmp_path / "tables.md").read_text()
    # The speed options: the engine with each against a bare eager NCHW loop, and against a bare loop with
    # the same options (for eager NCHW, the same measurement).
    options = results["options"]
    assert list(options) == ["NCHW, eager", "channels-last, eager"]
    assert options["NCHW, eager"]["same"] == options["NCHW, eager"]["yardstick"]
    cl = options["channels-last, eager"]
    assert cl["yardstick"]["channels_last"] and cl["yardstick"]["bare_options"] == "nchw-eager"
    assert cl["same"]["channels_last"] and cl["same"]["bare_options"] == "same" and cl["same"] != cl["yardstick"]
    assert "| channels-last, eager |" in (tmp_path / "tables.md").read_text()


def test_input_pipeline_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--tiny", "--data", str(tmp_path / "jpegs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(result["paths"]) == ["torchvision", "torchvision + timm's colour jitter", "largebatch, JPEG folder",
                                     "largebatch, prepared shards"]
    assert result["paths"]["torchvision"]["ratio"] == 1.0
    assert all(p["images_per_s"] > 0 and p["ratio"] > 0 for p in result["paths"].values())
    assert result["prepare_images_per_s"] > 0 and (tmp_path / "jpegs-prepared" / "largebatch-imagenet.json").is_file()
