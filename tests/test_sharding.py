import torch

from largebatch.training.augment import crop_flip
from largebatch.training.sharding import epoch_permutation, micro_batches, stream_steps


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
