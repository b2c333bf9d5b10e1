"""Data: IDX reading and its failure modes, root resolution order, splits and normalisation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmoe_cli.data.digits import Digits
from ssmoe_cli.data.fashion_mnist import FashionMNIST
from ssmoe_cli.data.idx import read_idx
from ssmoe_cli.data.idx_dataset import SPLITS
from ssmoe_cli.data.synthetic import Synthetic
from ssmoe_cli.errors import SsmoeError


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fake_mnist(root: Path, n_train: int = 60, n_test: int = 20, pixel: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = {"x_train": n_train, "y_train": n_train, "x_test": n_test, "y_test": n_test}
    for key, stem in SPLITS.items():
        n = sizes[key]
        arr = np.full((n, 28, 28), pixel) if key.startswith("x") else rng.integers(0, 10, n)
        write_idx(root / f"{stem}.gz", arr)


def test_read_idx_roundtrip_plain_and_gzip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), arr)


def test_read_idx_rejects_bad_files(tmp_path):
    arr = np.zeros((4, 5), dtype=np.uint8)
    write_idx(tmp_path / "ok", arr, compress=False)
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "truncated").write_bytes(raw[:-3])
    (tmp_path / "magic").write_bytes(b"\x12\x34" + raw[2:])
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:20])
    with pytest.raises(SsmoeError, match="truncated"):
        read_idx(tmp_path / "truncated")
    with pytest.raises(SsmoeError, match="magic"):
        read_idx(tmp_path / "magic")
    with pytest.raises(SsmoeError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")


def test_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, cache, system = tmp_path / "root", tmp_path / "cache" / "ssmoe" / "fashion_mnist", tmp_path / "sys"
    for d in (root, cache, system):
        write_fake_mnist(d)
    kw = dict(in_features=784, num_classes=10, download=False)
    assert FashionMNIST(root=str(root), system_dir=str(system), **kw).resolve()["x_train"].parent == root
    assert FashionMNIST(root=None, system_dir=str(system), **kw).resolve()["x_train"].parent == cache
    (cache / "train-images-idx3-ubyte.gz").unlink()  # incomplete dirs are skipped
    assert FashionMNIST(root=None, system_dir=str(system), **kw).resolve()["x_train"].parent == system


def test_missing_data_names_root_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dm = FashionMNIST(in_features=784, num_classes=10, root=str(tmp_path / "empty"), system_dir=None, download=False)
    with pytest.raises(SsmoeError, match=r"data\.root") as info:
        dm.setup()
    assert "dataset-fashion-mnist" in str(info.value)


def test_label_count_mismatch_is_an_error(tmp_path):
    write_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7))
    dm = FashionMNIST(in_features=784, num_classes=10, root=str(tmp_path), val_size=10, download=False)
    with pytest.raises(SsmoeError, match="labels"):
        dm.setup()


def test_split_is_fixed_disjoint_and_normalised_on_train_only():
    def make(seed):
        dm = Digits(in_features=64, num_classes=10, val_size=0.1, split_seed=seed)
        dm.setup()
        return dm

    a, b, c = make(0), make(0), make(1)
    xa = a.train_set.tensors[0]
    assert torch.equal(xa, b.train_set.tensors[0])
    assert not torch.equal(xa, c.train_set.tensors[0])
    # Training part is standardised with its own statistics (scalar mean/std).
    assert abs(float(xa.mean())) < 1e-4 and abs(float(xa.std()) - 1) < 1e-3
    n_train, n_val, n_test = len(a.train_set), len(a.val_set), len(a.test_set)
    assert n_train + n_val == 1797 - n_test and n_test == round(0.2 * 1797)
    rows = {tuple(r.tolist()) for r in a.train_set.tensors[0]}
    overlap = sum(tuple(r.tolist()) in rows for r in a.val_set.tensors[0])
    assert overlap <= 2  # digits has a few duplicate images; the index split itself is disjoint


def test_synthetic_is_deterministic_and_batches_cover_the_set():
    dm = Synthetic(in_features=8, num_classes=3, n_train=100, n_test=30, val_size=0.2, batch_size=16)
    dm.setup()
    dm2 = Synthetic(in_features=8, num_classes=3, n_train=100, n_test=30, val_size=0.2, batch_size=16)
    dm2.setup()
    assert torch.equal(dm.test_set.tensors[0], dm2.test_set.tensors[0])
    torch.manual_seed(0)
    batches = list(dm.train_dataloader())
    assert sum(len(y) for _, y in batches) == 80 and batches[0][0].shape == (16, 8)
