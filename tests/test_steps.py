"""Steps to result: read off evaluation curves, by hand."""
import math

from largebatch.tools.steps import perfect_scaling, steps_to_target, summarize

# Evaluations every epoch of a run with 10 optimizer steps per epoch.
EVALS = [{"epoch": e, "test_error": err} for e, err in ((1.0, 0.30), (2.0, 0.12), (3.0, 0.095), (4.0, 0.11))]


def test_first_evaluation_at_or_below_the_target_counts_its_steps():
    assert steps_to_target(EVALS, 10, 0.12) == 20  # exactly the target counts
    assert steps_to_target(EVALS, 10, 0.10) == 30  # later evaluations going back up do not matter
    assert steps_to_target(EVALS, 10, 0.09) is None
    # a step spanning two epochs: the evaluation's epoch is (step + 1) / steps_per_epoch
    assert steps_to_target([{"epoch": 7 / 2.5, "test_error": 0.1}], 2.5, 0.2) == 7


def test_summary_is_geometric_and_counts_the_misses():
    mean, lo, hi, missed = summarize([100, 400, None])
    assert math.isclose(mean, 200) and (lo, hi, missed) == (100, 400, 1)
    mean, lo, hi, missed = summarize([None, None])
    assert math.isnan(mean) and missed == 2


def test_perfect_scaling_halves_the_steps_per_doubling_from_the_smallest_batch_that_reached():
    assert perfect_scaling([128, 256, 512, 1024], [None, 400.0, 250.0, None]) == [800, 400, 200, 100]
    assert perfect_scaling([256], [None]) is None
