"""benchmarks/demo_check.py on hand-made sweep folders: the choice's margin, the tally, and `compare --seeds`."""
import json
import shutil
import subprocess
import sys

from conftest import ROOT
from test_report import _run

from largebatch.tools.cli import main
from largebatch.tools.compare import _seed_spread

DEMO = """name: {name}
program: recipes/fashion_mnist.py
method: grid
parameters:
  global-batch: {{values: [64, 256]}}
  seed: {{values: {seeds}}}
"""


def _sweep(root, name, seeds, errors):
    """A sweep folder `name` whose runs end at errors[batch][i] for seeds[i]."""
    (root / name).mkdir(parents=True)
    (root / name / "sweep.yaml").write_text(DEMO.format(name=name, seeds=seeds))
    for b, per_seed in errors.items():
        for seed, err in zip(seeds, per_seed):
            _run(root / name / f"global-batch={b},seed={seed}", [err], global_batch=b, seed=seed)


def _check(tmp_path, small, large, isa_errors):
    _sweep(tmp_path / "runs", "demo", [0, 1, 2, 3, 4], {64: small, 256: large})
    for isa, errors in isa_errors.items():
        _sweep(tmp_path / "check" / isa, "demo_check", [5, 6, 7], errors)
    return _tally(tmp_path)


def _tally(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/demo_check.py"), "--tally", "--runs",
                           str(tmp_path / "runs"), "--out", str(tmp_path / "check"), "--results",
                           str(tmp_path / "results"), "--isa", "native", "avx2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / "results/check.json").read_text()), (tmp_path / "results/check.md").read_text()


def test_the_choice_needs_two_std_of_margin_and_the_tally_counts_matches(tmp_path, capsys):
    small = [0.094, 0.095, 0.096, 0.094, 0.096]  # mean 9.50%: band up to 10.00%
    large = [0.093, 0.094, 0.095, 0.093, 0.095]  # mean 9.40, std 0.1: margin 0.60 = 6 std
    check, md = _check(tmp_path, small, large, {"native": {64: [0.09, 0.09, 0.09], 256: [0.094, 0.095, 0.096]}})
    sel = check["selection"]
    assert sel["baseline"] == 64 and sel["large"] == 256 and sel["chosen"]
    assert abs(sel["margin"] - 0.60) < 1e-9 and abs(sel["stats"]["256"]["std"] - 0.1) < 1e-9
    # 9.4 and 9.5 are within 0.5 points of 9.0; 9.6 is not.
    assert check["checks"]["native"] == dict(pairs=3, matched=2, rows=[
        dict(seed=5, small=9.0, large=9.4, matched=True), dict(seed=6, small=9.0, large=9.5, matched=True),
        dict(seed=7, small=9.0, large=9.6, matched=False)])
    assert check["checks"]["avx2"]["pairs"] == 0  # not run yet: said, not guessed
    assert "| native | 3 | 2 |" in md and "**chosen**" in md

    # The tally reads the runs' records kept beside check.json (no checkpoints), so it survives the runs folder:
    # a check spread over sessions and machines adds up in git.
    kept = tmp_path / "results/check/native/global-batch=256,seed=7"
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]
    shutil.rmtree(tmp_path / "check")
    again, _ = _tally(tmp_path)
    assert again["checks"] == check["checks"]

    _run(tmp_path / "b64", [0.095], global_batch=64, accumulation_steps=1, micro_batch_used=64, warmup_steps=0)
    _run(tmp_path / "b256", [0.094], global_batch=256, accumulation_steps=4, micro_batch_used=64, warmup_steps=0)
    main(["compare", str(tmp_path / "b64"), str(tmp_path / "b256"), "--plot", str(tmp_path / "c.png"),
          "--seeds", str(tmp_path / "results/check.json")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("B = 256 (4x the baseline, 4 accumulation steps of 64): 9.40% test error against 9.50%")
    assert last.endswith("the large batch matched | over 5 seeds: B = 64 9.50 ± 0.10 (9.40–9.60), "
                         "B = 256 9.40 ± 0.10 (9.30–9.50); other seed pairs matched 2/3 native"), last


def test_each_pair_sits_under_its_own_seed_whichever_sets_ran_it(tmp_path):
    small = [0.094, 0.095, 0.096, 0.094, 0.096]
    large = [0.093, 0.094, 0.095, 0.093, 0.095]
    _sweep(tmp_path / "check" / "avx2", "demo_check", [9, 10], {64: [0.09, 0.09], 256: [0.094, 0.097]})
    _, md = _check(tmp_path, small, large, {"native": {64: [0.09] * 3, 256: [0.091, 0.092, 0.093]}})
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[-3:] == [
        "| instruction set | pairs | matched | seed 5 | seed 6 | seed 7 | seed 9 | seed 10 |",
        "| native | 3 | 3 | 9.00 / 9.10 ✓ | 9.00 / 9.20 ✓ | 9.00 / 9.30 ✓ |  |  |",
        "| avx2 | 2 | 1 |  |  |  | 9.00 / 9.40 ✓ | 9.00 / 9.70 ✗ |"]


def test_a_diverged_large_batch_is_a_pair_that_did_not_match(tmp_path):
    small = [0.094, 0.095, 0.096, 0.094, 0.096]
    large = [0.093, 0.094, 0.095, 0.093, 0.095]
    _check(tmp_path, small, large, {"native": {64: [0.09], 256: [0.091]}})
    # Seed 6's large batch diverged after evaluations that, read as its result, would be inside the band.
    _run(tmp_path / "check/native/demo_check/global-batch=64,seed=6", [0.09], global_batch=64, seed=6)
    _run(tmp_path / "check/native/demo_check/global-batch=256,seed=6", [0.091], "diverged", global_batch=256, seed=6)
    check, md = _tally(tmp_path)
    assert [(r["seed"], r["matched"]) for r in check["checks"]["native"]["rows"]] == [(5, True), (6, False)]
    assert "| native | 2 | 1 |" in md


def test_a_margin_under_two_std_is_not_chosen(tmp_path):
    small = [0.094, 0.095, 0.096, 0.094, 0.096]  # band up to 10.00%
    large = [0.094, 0.097, 0.100, 0.094, 0.100]  # mean 9.70, std 0.3: margin 0.30 = 1 std
    check, md = _check(tmp_path, small, large, {})
    assert not check["selection"]["chosen"] and "NOT good enough" in md
    # No pair checked yet: the verdict line says so rather than staying silent about the check.
    assert _seed_spread(str(tmp_path / "results/check.json")).endswith(
        "; other seed pairs: not checked yet (make demo-check)")
