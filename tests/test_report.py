"""`largebatch report` on a hand-made runs folder: the numbers in the tables and the verdict."""
import dataclasses
import json
import os

import pytest

from largebatch.tools.cli import main
from largebatch.tools.report import load_run
from largebatch.training.config import Config
from largebatch.training.runfolder import RunFolder

BATCH = """name: batch_size
program: recipes/fashion_mnist.py
method: grid
parameters:
  global-batch: {values: [256, 512, 1024, 2048]}
  seed: {values: [0, 1]}
"""
WARMUP = """name: warmup
program: recipes/fashion_mnist.py
method: grid
parameters:
  warmup: {values: [none, constant, gradual]}
  seed: {values: [0, 1]}
  global-batch: {value: 1024}
"""


def _run(folder, errors, status="finished", noise=None, **config):
    """A run folder whose evaluations at epochs 1..6 end with `errors` (the last ones, in order)."""
    folder.mkdir(parents=True)
    b = config["global_batch"]
    config = dict(dataclasses.asdict(Config(epochs=6, warmup_epochs=1)), dataset="fashion-mnist",
                  peak_lr=0.1 * b / 256, steps_per_epoch=60000 / b, **config)
    RunFolder(folder).config.write_text(json.dumps(config))
    epochs = [1, 2, 3, 4, 5, 6][: 6 - len(errors)] + [6 - 0.15 * (len(errors) - 1 - i) for i in range(len(errors))]
    rows = [dict(step=0, epoch=0.1, lr=0.1, loss=2.0, examples=b)]
    if noise is not None:  # a run with accumulation logs the noise scale at each step
        rows = [dict(rows[0], noise_scale=noise)]  # the one step is at the peak rate
    rows += [dict(epoch=e, train_error=0.5 - 0.05 * i, test_error=err, test_loss=1.0)
             for i, (e, err) in enumerate(zip(epochs, [0.5] * (6 - len(errors)) + errors))]
    RunFolder(folder).metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    RunFolder(folder).summary.write_text(json.dumps(dict(status=status)))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "sweeps"
    (root / "batch_size").mkdir(parents=True)
    (root / "batch_size/sweep.yaml").write_text(BATCH)
    finals = {256: ([0.099, 0.100, 0.130], [0.102]),  # seed 0: median of the last 1/18 of training = 0.100
              512: ([0.103], [0.105]), 1024: ([0.104], [0.106]), 2048: ([0.120], [0.124])}
    for b, per_seed in finals.items():
        for seed, errors in enumerate(per_seed):
            _run(root / f"batch_size/global-batch={b},seed={seed}", errors, global_batch=b, seed=seed,
                 noise=500.0 + 200 * seed if b == 2048 else None)
    (root / "warmup").mkdir()
    (root / "warmup/sweep.yaml").write_text(WARMUP)
    for seed, err in enumerate([0.13, 0.15]):
        _run(root / f"warmup/seed={seed},warmup=none", [err], global_batch=1024, seed=seed, warmup="none")
    _run(root / "warmup/seed=0,warmup=constant", [0.20], global_batch=1024, warmup="constant")
    _run(root / "warmup/seed=1,warmup=constant", [0.9], "diverged", global_batch=1024, seed=1, warmup="constant")
    for seed in (0, 1):  # as `largebatch sweep` shares a finished run between sweeps
        os.symlink(f"../batch_size/global-batch=1024,seed={seed}", root / f"warmup/seed={seed},warmup=gradual")
    return root


def test_report_numbers(runs, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", str(runs), "--out", str(out)])
    md = (out / "report.md").read_text()
    # Baseline 10.10 ± 0.14 (seed 0 is the median 0.100, not its last 0.130); band max(2 x 0.14, 0.5) = 0.50.
    assert ("Setting: 6 epochs; η = 0.1 × B / 256; gradual warmup over 1 epochs when B > 256; step decay; "
            "BatchNorm ghost n = 32; weight decay 0.0001.") in md
    assert ("**Linear scaling + warmup holds up to B = 1024**: 10.50 ± 0.14% test error against the B = 256 "
            "baseline (10.10 ± 0.14% test error), within 0.50 points. At B = 2048 it breaks: 12.20 ± 0.28% "
            "(+2.10 points).") in md
    assert "| baseline | 256 | 0.1 | 10.10 ± 0.14 | +0.00 | 25.00 | 2 (10.00–10.20) |  |" in md
    assert "|  | 512 | 0.2 | 10.40 ± 0.14 | +0.30 | 25.00 | 2 (10.30–10.50) |  |" in md
    assert "|  | 2k | 0.8 | 12.20 ± 0.28 | +2.10 | 25.00 | 2 (12.00–12.40) | 600 |" in md
    assert "Fewer than 5 seeds (the paper's 5): B=256 (2), B=512 (2), B=1k (2), B=2k (2)" in md
    # Steps to result, target 10.10 + 0.50 = 10.60%: 256's seeds first reach it at epochs 5.7 and 6 of 234.375
    # steps each (1336, 1406; geometric mean 1371); 512's both at epoch 6 (703); 2k never.
    assert "at most 10.60% test error (the baseline's 10.10% + 0.50 points)" in md
    assert "| 256 | 1371 | 1336–1406 | 2 of 2 | 1371 | 1.00 |" in md
    assert "| 512 | 703 | 703–703 | 2 of 2 | 685 | 0.97 |" in md and "| 2k | never |  | 0 of 2 | 171 |  |" in md
    assert (out / "steps_vs_batch.png").stat().st_size > 0
    assert "at the peak learning rate (McCandlish et al.'s estimate of the critical batch), measured in the runs " \
           "with accumulation: 600 at B = 2k." in md
    # The warmup table in the paper's form: the baseline row first, then each warmup at B = 1k.
    assert "## Warmup at B = 1k" in md
    assert "| baseline | 256 | 0.1 |  | 10.10 ± 0.14 | +0.00 | 25.00 | 2 (10.00–10.20) |" in md
    assert "|  | 1k | 0.4 | none | 14.00 ± 1.41 | +3.90 | 25.00 | 2 (13.00–15.00) |" in md
    assert "|  | 1k | 0.4 | constant | 20.00 (1 of 2 diverged) | +9.90 | 25.00 | 2 |" in md
    assert "|  | 1k | 0.4 | gradual | 10.50 ± 0.14 | +0.40 | 25.00 | 2 (10.40–10.60) |" in md
    for png in ("error_vs_batch.png", "curves_batch_size.png", "curves_warmup.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({png})" in md
    html = (out / "report.html").read_text()
    assert "<b>Linear scaling + warmup holds up to B = 1024</b>" in html
    assert '<img src="error_vs_batch.png"' in html and "<td>14.00 ± 1.41</td>" in html


def test_report_tolerance_moves_the_limit(runs, tmp_path):
    out = tmp_path / "strict"
    main(["report", str(runs), "--out", str(out), "--tolerance", "0.1"])  # band = 2 std = 0.28 points
    assert ("**Linear scaling + warmup holds up to B = 256**, the baseline itself (10.10 ± 0.14% test error): no "
            "larger batch stays within 0.28 points of it. At B = 512 it breaks: 10.40 ± 0.14% (+0.30 points).") \
        in (out / "report.md").read_text()


def test_report_on_a_folder_without_sweeps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["report", str(tmp_path)])
    assert exit.value.code == 2
    assert "holds no sweep folders" in capsys.readouterr().err


def test_report_leaves_out_unfinished_runs_and_says_so(runs, tmp_path, capsys):
    (runs / "batch_size/global-batch=2048,seed=1/summary.json").unlink()  # still running
    (runs / "batch_size/global-batch=512,seed=0/summary.json").write_text("{garbage")  # damaged
    main(["report", str(runs), "--out", str(tmp_path / "r")])
    md = (tmp_path / "r/report.md").read_text()
    assert "|  | 2k | 0.8 | 12.00 (1 of 2 seeds unfinished) | +1.90 | 25.00 | 1 of 2 | 500 |" in md
    assert "| 512 | 0.2 | 10.50 (1 of 2 seeds unfinished) |" in md
    assert "At B = 2048 it breaks: 12.00% (1 of 2 seeds unfinished) (+1.90 points)." in md  # the unit by its number
    assert ("Not in the batch_size numbers above, 2 run(s): global-batch=512,seed=0 (its summary.json is "
            "damaged), global-batch=2048,seed=1 (not finished); `largebatch sweep` again finishes them.") in md
    assert "global-batch=512,seed=0/summary.json is damaged" in capsys.readouterr().err


@pytest.mark.parametrize("last, every, median", [(90, 1, 88), (12, 0.25, 11.75), (6, 1, 6)])
def test_a_runs_error_is_the_median_of_the_last_5_of_90_epochs(last, every, median):
    from largebatch.tools.report import Run

    epochs = [every * (i + 1) for i in range(round(last / every))]
    run = Run(None, {}, "finished", [dict(epoch=e, test_error=e) for e in epochs])
    assert run.error == median  # 90 epochs: 86..90; 12 (every quarter): 11.5, 11.75, 12; 6: the last alone


def test_compare_says_whether_each_large_batch_matched(tmp_path, capsys):
    # `make demo`'s last line: a run within 0.5 points of the first run's test error matched it.
    _run(tmp_path / "b256", [0.0919], global_batch=256, accumulation_steps=1, micro_batch_used=256, warmup_steps=0)
    _run(tmp_path / "b1024", [0.0968], global_batch=1024, accumulation_steps=4, micro_batch_used=256, warmup_steps=9)
    _run(tmp_path / "b4096", [0.0970], global_batch=4096, accumulation_steps=16, micro_batch_used=256,
         warmup_steps=9)
    main(["compare", str(tmp_path / "b256"), str(tmp_path / "b1024"), str(tmp_path / "b4096"),
          "--plot", str(tmp_path / "c.png")])
    *_, first, second = capsys.readouterr().out.strip().splitlines()
    assert first == ("B = 1024 (4x the baseline, 4 accumulation steps of 256): 9.68% test error against 9.19% at "
                     "B = 256, inside the band (9.69%): the large batch matched")
    assert second.endswith("9.70% test error against 9.19% at B = 256, outside the band (9.69%): it did NOT match")
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_compare_judges_the_median_of_the_last_evaluations_as_the_report_does(tmp_path, capsys):
    # The last evaluation alone (9.90) is outside the band; the report's error, the median of the last 1/18's
    # evaluations (9.60, 9.65, 9.90), is inside: compare's verdict is the one demo_check.py tallies.
    _run(tmp_path / "b256", [0.0919], global_batch=256, accumulation_steps=1, micro_batch_used=256, warmup_steps=0)
    _run(tmp_path / "b1024", [0.0960, 0.0965, 0.0990], global_batch=1024, accumulation_steps=4,
         micro_batch_used=256, warmup_steps=9)
    main(["compare", str(tmp_path / "b256"), str(tmp_path / "b1024"), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[2].endswith(" 9.65"), out[2]
    assert out[-1].endswith("9.65% test error against 9.19% at B = 256, inside the band (9.69%): the large batch "
                            "matched")


def test_compare_gives_no_verdict_on_an_unfinished_run(tmp_path, capsys):
    _run(tmp_path / "b256", [0.0919], global_batch=256, accumulation_steps=1, micro_batch_used=256, warmup_steps=0)
    _run(tmp_path / "b1024", [0.0968], global_batch=1024, accumulation_steps=4, micro_batch_used=256, warmup_steps=9)
    (tmp_path / "b1024/summary.json").unlink()  # stopped at its last evaluation, epoch 6 of 8
    config = json.loads((tmp_path / "b1024/config.json").read_text())
    (tmp_path / "b1024/config.json").write_text(json.dumps(dict(config, epochs=8)))
    main(["compare", str(tmp_path / "b256"), str(tmp_path / "b1024"), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[2].endswith("9.68  (not finished: epoch 6.0 of 8)"), out[2]
    assert out[-1] == "B = 1024: no verdict, the run is not finished: epoch 6.0 of 8; finish it with --resume"
    main(["compare", str(tmp_path / "b1024"), str(tmp_path / "b256"), "--plot", str(tmp_path / "c.png")])
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        "no verdicts: the baseline B = 1024 is not finished: epoch 6.0 of 8; finish it with --resume")


def test_report_of_chosen_sweeps(runs, tmp_path, capsys):
    # Sweeps at another budget share the folder: --sweeps keeps a report to those named.
    out = tmp_path / "only"
    main(["report", str(runs), "--out", str(out), "--sweeps", "warmup"])
    md = (out / "report.md").read_text()
    assert "## Warmup at B = 1k" in md and "How far can I scale?" not in md and "curves_batch_size" not in md
    with pytest.raises(SystemExit) as exit:
        main(["report", str(runs), "--sweeps", "warmup", "figure9"])
    assert exit.value.code == 2
    assert "--sweeps figure9: no such sweep in" in capsys.readouterr().err


BUDGET = """name: budget
program: recipes/fashion_mnist.py
method: grid
parameters:
  epochs: {values: [6, 10]}
  global-batch: {values: [256, 128]}
  seed: {values: [0, 1]}
"""


def test_the_budget_table_finds_the_shortest_budget_where_small_batches_agree(tmp_path):
    root = tmp_path / "sweeps"
    (root / "budget").mkdir(parents=True)
    (root / "budget/sweep.yaml").write_text(BUDGET)
    errors = {(6, 256): (0.108, 0.110), (6, 128): (0.101, 0.103), (10, 256): (0.092, 0.094), (10, 128): (0.093, 0.091)}
    for (epochs, b), per_seed in errors.items():
        for seed, err in enumerate(per_seed):
            _run(root / f"budget/epochs={epochs},global-batch={b},seed={seed}", [err], global_batch=b, seed=seed,
                 epochs=epochs)
    main(["report", str(root), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out/report.md").read_text()
    assert "| epochs | B = 128 | B = 256 | spread of the means (points) | agree with B = 256? |" in md
    assert "| 6 | 10.20 ± 0.14 | 10.90 ± 0.14 | 0.70 | no (band 0.50) |" in md  # 128 is 0.7 points better
    assert "| 10 | 9.20 ± 0.14 | 9.30 ± 0.14 | 0.10 | yes (band 0.50) |" in md
    assert "The shortest budget here at which the small batches agree: **10 epochs**." in md
    assert "batch-size sweep runs" not in md  # there is none here
    (root / "batch_size").mkdir()
    (root / "batch_size/sweep.yaml").write_text(BATCH)
    for b in (256, 512):  # a batch-size sweep at another budget than the one chosen: the report says so
        for seed in (0, 1):
            _run(root / f"batch_size/global-batch={b},seed={seed}", [0.1], global_batch=b, seed=seed)
    main(["report", str(root), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out/report.md").read_text()
    assert "agree: **10 epochs**. The batch-size sweep runs at 6 epochs." in md


EDGE = """name: edge_warmup
program: recipes/fashion_mnist.py
method: grid
parameters:
  warmup: {values: [none, gradual]}
  global-batch: {values: [512, 1024]}
  seed: {values: [0, 1]}
"""


def test_an_ablation_at_two_batches_is_a_table_in_the_papers_form(runs, tmp_path):
    (runs / "edge_warmup").mkdir()
    (runs / "edge_warmup/sweep.yaml").write_text(EDGE)
    for b, errors in ((512, (0.12, 0.14)), (1024, (0.15, 0.17))):
        for seed, err in enumerate(errors):
            _run(runs / f"edge_warmup/global-batch={b},seed={seed},warmup=none", [err], global_batch=b, seed=seed,
                 warmup="none")
    for seed in (0, 1):  # gradual at 1024 is shared with the batch sweep; gradual at 512 has not run yet
        os.symlink(f"../batch_size/global-batch=1024,seed={seed}",
                   runs / f"edge_warmup/global-batch=1024,seed={seed},warmup=gradual")
    main(["report", str(runs), "--out", str(tmp_path / "out"), "--sweeps", "batch_size", "edge_warmup"])
    md = (tmp_path / "out/report.md").read_text()
    assert "## Warmup at B = 512 and 1k" in md
    assert ("count) and its distance in points to the baseline, B = 256: 10.10 ± 0.14 (the paper's kn = 256 "
            "baseline: 23.60") in md
    assert ("| warmup | B = 512 | Δ vs baseline | B = 1k | Δ vs baseline | paper, kn = 8k (ImageNet) |") in md
    assert ("| none | 13.00 ± 1.41 (12.00–14.00, 2 seeds) | +2.90 | 16.00 ± 1.41 (15.00–17.00, 2 seeds) | +5.90 "
            "| 24.84 ± 0.37 |") in md
    assert "| gradual | not run yet |  | 10.50 ± 0.14 (10.40–10.60, 2 seeds) | +0.40 | 23.74 ± 0.09 |" in md


def test_a_run_written_before_an_option_existed_reads_it_at_its_default(runs):
    folder = runs / "batch_size/global-batch=512,seed=0"
    config = json.loads(RunFolder(folder).config.read_text())
    del config["lr_scaling"]  # runs from before --lr-scaling (they scaled linearly, today's default)
    RunFolder(folder).config.write_text(json.dumps(config))
    assert load_run(folder).config["lr_scaling"] == Config().lr_scaling == "linear"


def test_the_band_is_drawn_above_the_baseline_only(tmp_path, monkeypatch):
    """The verdict is one-sided (at most mean + band), so is the shaded band."""
    from matplotlib.axes import Axes

    from largebatch.tools.figures import error_vs_batch

    spans, span = [], Axes.axhspan
    monkeypatch.setattr(Axes, "axhspan",
                        lambda self, lo, hi, **kw: spans.append((lo, hi)) or span(self, lo, hi, **kw))
    error_vs_batch([256, 512], ["256", "512"], [6.6, 6.9], [0.1, 0.1], ("B=256", 6.6, 0.5), tmp_path / "e.png")
    assert spans == [(6.6, 7.1)] and (tmp_path / "e.png").exists()


def test_a_cell_says_spread_divergence_and_missing_seeds_in_one_parenthesis():
    from largebatch.tools.report import Group, Run

    def run(error, status="finished"):
        return Run(None, {}, status, [{"epoch": 1.0, "test_error": error}])

    group = Group({"global_batch": 2048}, [run(0.07), run(0.08), run(0.5, "diverged")], expected=5)
    assert group.cell("%", spread=True) == "7.50 ± 0.71% (7.00–8.00, 2 seeds; 1 of 3 diverged; 2 of 5 seeds unfinished)"
    assert Group({}, [run(0.0703)], expected=5).cell(spread=True) == "7.03 (1 seed; 4 of 5 seeds unfinished)"
    assert Group({}, [run(0.0703)], expected=1).cell() == "7.03"
