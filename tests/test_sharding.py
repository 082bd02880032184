import torch

from largebatch.training.augment import crop_flip
from largebatch.training.sharding import epoch_order, micro_batches


def _rank_indices(num, B, seed, epoch, W, A):
    order = epoch_order(num, B, seed, epoch)
    return [torch.cat([torch.cat(micro_batches(row, r, W, A)) for row in order]) for r in range(W)]


def test_workers_share_one_permutation_per_epoch_disjointly():
    num, B, W, A = 1000, 96, 4, 3  # 10 steps, 960 examples used, 40 dropped
    for epoch in range(3):
        per_rank = _rank_indices(num, B, seed=7, epoch=epoch, W=W, A=A)
        assert all(len(r) == 10 * B // W for r in per_rank)
        union = torch.cat(per_rank)
        assert len(union) == 960 and len(set(union.tolist())) == 960  # disjoint, no repeats
        assert union.max() < num and union.min() >= 0
        for a in range(W):
            for b in range(a + 1, W):
                assert not set(per_rank[a].tolist()) & set(per_rank[b].tolist())
        # Exactly the epoch's permutation prefix, whatever the split.
        assert set(union.tolist()) == set(epoch_order(num, B, 7, epoch).flatten().tolist())


def test_new_shuffle_each_epoch_and_seeded():
    a, b = epoch_order(1000, 100, 0, 0), epoch_order(1000, 100, 0, 1)
    assert not torch.equal(a, b)
    assert torch.equal(a, epoch_order(1000, 100, 0, 0))
    assert not torch.equal(a, epoch_order(1000, 100, 1, 0))


def test_step_examples_do_not_depend_on_split():
    row = epoch_order(1000, 128, 3, 0)[2]
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
