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
