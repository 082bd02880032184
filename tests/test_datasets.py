"""Loaders on small data written in the real on-disk formats."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import write_idx

from largebatch.errors import UserError
from largebatch.training.data import load_cifar10, load_fashion_mnist, read_idx


def write_fmnist(folder, n_train=40, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n,)), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_any_folder(tmp_path, gz):
    write_fmnist(tmp_path, gz=gz)
    data = load_fashion_mnist(str(tmp_path))
    assert (data.num_train, data.num_test, data.in_chans) == (40, 20, 1)
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes()) if gz else \
        (tmp_path / "train-images-idx3-ubyte").read_bytes()
    assert torch.equal(data.train_x[3, 0], torch.frombuffer(bytearray(raw[16 + 3 * 784: 16 + 4 * 784]),
                                                            dtype=torch.uint8).view(28, 28))
    x, y = data.train_batch(torch.tensor([0, 5, 7]), seed=0, epoch=0)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == data.train_y[[0, 5, 7]].tolist()
    x, _ = data.test_batch(torch.arange(4))
    assert torch.allclose(x, (data.test_x[:4].float() / 255 - 0.2860) / 0.3530, atol=1e-5)


def test_label_count_mismatch(tmp_path):
    write_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(UserError, match="19 labels for 20 images"):
        load_fashion_mnist(str(tmp_path))


def test_wrong_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "f")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_idx_parser_accepts_or_raises_user_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("idx") / "blob"
    path.write_bytes(blob)
    try:
        out = read_idx(path)
    except UserError:
        return
    assert out.dtype == torch.uint8 and out.numel() == len(blob) - 4 - 4 * blob[3]


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 6))}
        (tmp_path / name).write_bytes(pickle.dumps(d))
    data = load_cifar10(str(tmp_path))
    assert (data.num_train, data.num_test, data.in_chans) == (30, 6, 3)
    first = pickle.loads((tmp_path / "data_batch_2").read_bytes())
    assert torch.equal(data.train_x[6], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert data.train_y[6] == first[b"labels"][0]
    x, _ = data.train_batch(torch.arange(8), seed=0, epoch=0)
    assert x.shape == (8, 3, 32, 32)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        load_cifar10(str(tmp_path))
