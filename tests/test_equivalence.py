"""The trajectory depends on B, n and the seed only, not on how B is split (devices x accumulation)."""
import json

import pytest

from conftest import ROOT, assert_within_drift, final_params, launch, step_losses

from largebatch.training.runfolder import RunFolder

pytestmark = [pytest.mark.slow, pytest.mark.numerics]  # trains: see `pytest -m "not slow"` for the fast tier

RECIPE = ROOT / "recipes/fashion_mnist.py"
NOBN = ROOT / "tests/nobn_train.py"


def _args(data, run_dir, B, b, *extra, subset=2048):
    return ["--data-dir", data, "--global-batch", B, "--micro-batch", b, "--subset", subset, "--epochs", 1,
            "--run-dir", run_dir,
            "--eval-every", 10, *extra]


def _test_loss(run_dir) -> float:
    rows = [json.loads(line) for line in RunFolder(run_dir).metrics.read_text().splitlines()]
    return [r for r in rows if "test_loss" in r][-1]["test_loss"]


def test_split_invariance_with_real_model_and_augmentation(tmp_path, small_fmnist):
    # B = 256 with BN over groups of 64: 2 processes x 2 accumulation x 64, 1 x 4 x 64, 1 x 1 x 256; 1920
    # examples are 7.5 steps an epoch, so step 7 takes the end of epoch 0 and the start of epoch 1.
    runs = {"2x2x64": (2, 64), "1x4x64": (1, 64), "1x1x256": (1, 256)}
    for name, (nproc, b) in runs.items():
        launch(RECIPE, _args(small_fmnist, tmp_path / name, 256, b, "--bn-batch", 64, "--epochs", 1.2, subset=1920),
               nproc=nproc)
    losses = {name: step_losses(tmp_path / name) for name in runs}
    assert len(losses["1x4x64"]) == 9
    for name in runs:
        assert_within_drift(losses[name], losses["1x4x64"], 256)
    assert losses["1x4x64"][-1] < losses["1x4x64"][0]  # it trained
    # The evaluated model too: BN statistics recomputed over the same examples (precise BN) in every split.
    tested = {name: _test_loss(tmp_path / name) for name in runs}
    assert max(tested.values()) - min(tested.values()) < 1e-4, tested
    # ...whereas rank 0's running averages saw only half of each step's groups on 2 processes.
    launch(RECIPE, _args(small_fmnist, tmp_path / "running", 256, 64, "--bn-batch", 64, "--epochs", 1.2,
                         "--precise-bn", 0,
                         subset=1920), nproc=2)
    assert abs(_test_loss(tmp_path / "running") - tested["1x4x64"]) > 1e-4


def _max_param_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_bn_free_model_same_parameters_whatever_the_split(tmp_path, small_fmnist):
    b = 32
    launch(NOBN, _args(small_fmnist, tmp_path / "dist", 4 * b, b), nproc=2)  # 2 processes x 2 accumulation
    launch(NOBN, _args(small_fmnist, tmp_path / "accum", 4 * b, b))  # 1 process x 4 accumulation
    launch(NOBN, _args(small_fmnist, tmp_path / "big", 4 * b, 4 * b))  # 1 process, one micro-batch of 4b
    ref = final_params(tmp_path / "accum")
    assert _max_param_diff(final_params(tmp_path / "dist"), ref) < 1e-5
    assert _max_param_diff(final_params(tmp_path / "big"), ref) < 1e-5
    losses = step_losses(tmp_path / "accum")
    assert len(losses) == 16 and losses[-1] < losses[0]  # it trained


def test_ghost_bn_accumulation_equals_big_micro_batch(tmp_path, small_fmnist):
    # 4 steps: float rounding differs between the two (sums in another order) and BN networks amplify
    # it step by step, so the comparison is made before that noise reaches 1e-5.
    b = 32
    launch(RECIPE, _args(small_fmnist, tmp_path / "accum", 4 * b, b, "--bn-batch", b, subset=512))
    launch(RECIPE, _args(small_fmnist, tmp_path / "big", 4 * b, 4 * b, "--bn-batch", b, subset=512))
    assert _max_param_diff(final_params(tmp_path / "accum"), final_params(tmp_path / "big")) < 1e-5
    # ...whereas plain micro-batch BN over 4b is a different function.
    launch(RECIPE, _args(small_fmnist, tmp_path / "micro", 4 * b, 4 * b, "--bn", "micro", subset=512))
    assert _max_param_diff(final_params(tmp_path / "micro"), final_params(tmp_path / "accum")) > 1e-3
