import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

from largebatch.training.augment import crop_flip
from largebatch.training.sharding import epoch_permutation, micro_batches, stream_loader, stream_steps


def test_the_stream_is_the_epochs_permutations_one_after_another():
    num, B = 1000, 96  # 10.42 steps an epoch: step 10 takes the last 40 of epoch 0 and the first 56 of epoch 1
    indices, epochs = stream_steps(num, B, seed=7, first_step=0, steps=31)  # 3 epochs' worth, rounded to steps
    flat, flat_epochs = indices.flatten(), epochs.flatten()
    for e in range(2):
        assert torch.equal(flat[e * num:(e + 1) * num], epoch_permutation(num, 7, e))  # nothing dropped
        assert (flat_epochs[e * num:(e + 1) * num] == e).all()
    assert torch.equal(flat[2 * num:], epoch_permutation(num, 7, 2)[:31 * B - 2 * num])
    assert epochs[10].tolist() == [0] * 40 + [1] * 56
    # Any block of steps is the same slice of the stream.
    later, later_epochs = stream_steps(num, B, seed=7, first_step=9, steps=3)
    assert torch.equal(later, indices[9:12]) and torch.equal(later_epochs, epochs[9:12])


def test_new_shuffle_each_epoch_and_seeded():
    a, b = epoch_permutation(1000, 0, 0), epoch_permutation(1000, 0, 1)
    assert not torch.equal(a, b)
    assert torch.equal(a, epoch_permutation(1000, 0, 0))
    assert not torch.equal(a, epoch_permutation(1000, 1, 0))


def test_step_examples_do_not_depend_on_split():
    row = stream_steps(1000, 128, 3, first_step=7, steps=1)[0][0]  # spans epochs 0 and 1
    for W, A in [(1, 1), (1, 4), (2, 2), (4, 1), (2, 4)]:
        pieces = [micro_batches(row, r, W, A) for r in range(W)]
        # Reassemble in micro-batch order a*W + r: must give back the step's B indices in order.
        flat = torch.cat([pieces[r][a] for a in range(A) for r in range(W)])
        assert torch.equal(flat, row)


def test_augmentation_is_a_function_of_seed_epoch_index():
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    idx = torch.arange(50)
    full = crop_flip(images, idx, seed=1, epoch=2, pad=2, flip=True)
    part = crop_flip(images[10:20], idx[10:20], seed=1, epoch=2, pad=2, flip=True)
    assert torch.equal(full[10:20], part)  # same example, same crop, whatever batch it is in
    assert not torch.equal(full, crop_flip(images, idx, seed=1, epoch=3, pad=2, flip=True))
    assert not torch.equal(full, crop_flip(images, idx, seed=2, epoch=2, pad=2, flip=True))
    # Each output is a shifted (and maybe mirrored) window of the zero-padded input.
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(50):
        windows = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(full[i], w) or torch.equal(full[i], w.flip(2)) for w in windows)

    # One epoch per example, as when a micro-batch spans two epochs: each example's own epoch decides.
    mixed = crop_flip(images, idx, seed=1, epoch=torch.tensor([2] * 25 + [3] * 25), pad=2, flip=True)
    assert torch.equal(mixed[:25], full[:25])
    assert torch.equal(mixed[25:], crop_flip(images, idx, seed=1, epoch=3, pad=2, flip=True)[25:])


def _pair_and_pid(indices, epochs):
    return indices, epochs, os.getpid()


def test_one_loader_serves_the_run_in_step_order():
    # Each micro-batch is computed from its number in whichever worker fetches it: the same (indices,
    # epochs) as stream_steps cut by micro_batches, across epoch ends, and the same workers throughout.
    num, B, W, A = 1000, 96, 2, 3
    indices, epochs = stream_steps(num, B, 7, first_step=5, steps=25)  # epochs 0 to 2
    for rank in range(W):
        expected = [pair for s in range(25)
                    for pair in zip(micro_batches(indices[s], rank, W, A), micro_batches(epochs[s], rank, W, A))]
        for workers in (0, 2):
            got = list(stream_loader(_pair_and_pid, num, B, 7, rank, W, A, 5, 25, workers))
            assert len(got) == len(expected) == 75
            assert all(torch.equal(i, ei) and torch.equal(e, ee) for (i, e, _), (ei, ee) in zip(got, expected))
            assert len({pid for *_, pid in got}) == (workers or 1)


@pytest.mark.slow
def test_the_engine_starts_its_loader_workers_once_per_run(tmp_path, small_fmnist):
    # 3 epochs with 3 evaluations, one worker per loader: the training stream, the test set and the
    # precise-BN examples each start their worker once (an epoch's loader would start 3 + 2 x 3).
    starts = tmp_path / "starts"
    proc = subprocess.run([sys.executable, str(ROOT / "tests/loader_starts_train.py"), f"--data-dir={small_fmnist}",
                           "--subset=128", "--global-batch=64", "--micro-batch=32", "--epochs=3", "--workers=1",
                           "--precise-bn=64", f"--run-dir={tmp_path / 'run'}"],
                          env=dict(os.environ, STARTS=str(starts), TQDM_DISABLE="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("epoch ") >= 3 and "epoch 3.00" in proc.stdout
    assert len(starts.read_text().split()) == 3
