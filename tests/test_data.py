"""Data: IDX reading and its failure modes, root resolution order, splits and normalisation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST

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


def test_an_explicit_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    """Complete copies in the cache and the system dir never stand in for the root the user gave."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache, system = tmp_path / "cache" / "ssmoe" / "fashion_mnist", tmp_path / "sys"
    for d in (cache, system):
        write_fake_mnist(d)
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    kw = dict(in_features=784, num_classes=10, system_dir=str(system), download=False)
    cases = {
        "missing": "does not exist",
        "file": "is not a directory",
        "half": r"does not hold fashion_mnist \(download disabled",
    }
    for name, words in cases.items():
        with pytest.raises(SsmoeError, match=rf"^data\.root={tmp_path / name} {words}"):
            FashionMNIST(root=str(tmp_path / name), **kw).resolve()


def test_download_goes_into_an_explicit_root_checked_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mirror, root = tmp_path / "mirror", tmp_path / "root"
    write_fake_mnist(mirror)
    root.mkdir()
    dm = FashionMNIST(in_features=784, num_classes=10, root=str(root), system_dir=None, download=True)
    dm.mirror = mirror.as_uri() + "/"  # urllib serves file:// URLs: the real download code, no network
    dm.md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    assert dm.resolve()["x_test"] == root / "t10k-images-idx3-ubyte.gz"
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in mirror.iterdir())
    bad = tmp_path / "bad"
    bad.mkdir()
    dm.root, dm.md5 = str(bad), {name: "0" * 32 for name in dm.md5}
    with pytest.raises(SsmoeError, match=r"does not hold fashion_mnist \(download .* checksum mismatch"):
        dm.resolve()
    assert list(bad.iterdir()) == []  # no partial or temporary file left in the user's directory


def test_an_explicit_root_that_does_not_hold_the_data_fails_through_the_cli(run_cli, tmp_path):
    """The issue's case: data.root=/etc/passwd used to train on the Debian copy and log the bad root."""
    (tmp_path / "empty").mkdir()
    for root, words in (("/etc/passwd", "is not a directory"), ("empty", "does not hold fashion_mnist")):
        proc = run_cli("train", "data=fashion_mnist", f"data.root={root}", "data.download=false", "logger=none",
                       "model=fcl", *FAST, check=False)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"ssmoe: error: data.root={root} {words}"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "test accuracy" not in proc.stdout


def test_missing_data_names_root_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dm = FashionMNIST(in_features=784, num_classes=10, root=None, system_dir=None, download=False)
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


@pytest.mark.parametrize("drop_last", [False, True])
def test_index_tensor_batches_are_batch_samplers_lists(drop_last):
    """EpochBatchSampler yields whole index tensors for a permutation (or the identity): exactly the
    batches BatchSampler makes of RandomSampler's (SequentialSampler's) indices, epoch by epoch."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, TensorDataset

    from ssmoe_cli.data.base import EpochBatchSampler

    data = TensorDataset(torch.arange(300.0))
    for epoch in (0, 3):
        ours = EpochBatchSampler(RandomSampler(data), batch_size=64, drop_last=drop_last, seed=7)
        ours.set_epoch(epoch)
        reference = RandomSampler(data, generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
        expected = list(BatchSampler(reference, batch_size=64, drop_last=drop_last))
        got = list(ours)
        assert all(isinstance(b, torch.Tensor) for b in got)
        assert [b.tolist() for b in got] == expected and len(expected) == (4 if drop_last else 5)
    sequential = EpochBatchSampler(SequentialSampler(data), batch_size=64, drop_last=drop_last)
    assert [b.tolist() for b in sequential] == list(BatchSampler(SequentialSampler(data), 64, drop_last))
