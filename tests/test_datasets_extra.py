"""data=mnist1d and data=letter: deterministic loading, sizes flowing from the data to every model,
and one-line errors for a missing package, a missing file or a corrupt one (issue 12, items 1 and 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, cli_env, errors
from omegaconf import OmegaConf

from ssmoe_cli.data.letter import LetterRecognition, read_letter_rda
from ssmoe_cli.data.mnist1d import MNIST1D
from ssmoe_cli.errors import SsmoeError


def mnist1d(cache_dir: Path, **kwargs) -> MNIST1D:
    return MNIST1D(in_features=40, num_classes=10, cache_dir=str(cache_dir), **kwargs)


def letter(root: str | Path | None, **kwargs) -> LetterRecognition:
    return LetterRecognition(root=str(root) if root else None, in_features=16, num_classes=26, **kwargs)


def letter_dir() -> Path | None:
    """Where this machine has LetterRecognition.rda (`make data` puts it in ~/.cache/ssmoe/mlbench)."""
    try:
        return letter(None).resolve().parent
    except SsmoeError:
        return None


LETTER_DIR = letter_dir()
needs_letter = pytest.mark.skipif(
    LETTER_DIR is None, reason="LetterRecognition.rda not found: run `make data` (Debian r-cran-mlbench, no R needed)"
)


def run_train(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssmoe_cli", "train", *args],
        cwd=cwd, env=env or cli_env(cwd), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def table_value(block: str, label: str) -> float:
    """A figure of the run's summary table, e.g. '│ params total │ 37,826 │ params/total │'."""
    line = next(line for line in block.splitlines() if line.startswith(f"│ {label} "))
    return float(line.split("│")[2].replace(",", ""))


# -- MNIST-1D ---------------------------------------------------------------------------------------
def test_mnist1d_is_generated_deterministically_and_read_back_from_its_cache(tmp_path, monkeypatch):
    np_state = np.random.get_state()[1].copy()
    first = mnist1d(tmp_path / "a").load()
    again = mnist1d(tmp_path / "b").load()  # generated afresh in another cache
    # make_dataset seeds numpy's global generator; the loader puts its state back.
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert first.x_train.shape == (4000, 40) and first.x_test.shape == (1000, 40)
    assert set(np.unique(first.y_train)) == set(range(10)) and set(np.unique(first.y_test)) <= set(range(10))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(first, key), getattr(again, key)), key

    (cached,) = (tmp_path / "a").iterdir()
    assert cached.suffix == ".npz" and len(cached.stem) == 16
    with np.load(cached, allow_pickle=False) as npz:  # plain arrays only: no pickle in our cache
        assert np.array_equal(npz["x_train"], first.x_train)

    # A second load reads the file: generating again would fail here.
    def no_generation(*_args):
        raise AssertionError("generated although the cache holds the data")

    monkeypatch.setattr("ssmoe_cli.data.mnist1d.generate", no_generation)
    hit = mnist1d(tmp_path / "a").load()
    assert np.array_equal(hit.x_test, first.x_test) and np.array_equal(hit.y_train, first.y_train)
    monkeypatch.undo()

    other = mnist1d(tmp_path / "a", seed=43, num_samples=500).load()  # other arguments: another file
    assert other.x_train.shape == (400, 40) and len(list((tmp_path / "a").iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "pickled object array", "foreign arrays"])
def test_a_corrupt_mnist1d_cache_file_is_generated_again(tmp_path, damage, caplog):
    good = mnist1d(tmp_path, num_samples=200).load()
    (path,) = tmp_path.iterdir()
    spec = np.load(path)["spec"]
    arrays = {"x_train": good.x_train, "y_train": good.y_train, "x_test": good.x_test, "y_test": good.y_test}
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "pickled object array":  # what allow_pickle=False is there to refuse
        np.savez(path, spec=spec, **(arrays | {"x_train": np.array([{}], dtype=object)}))
    else:
        np.savez(path, spec=spec, **(arrays | {"x_train": np.zeros((5, 3)), "y_train": np.zeros(5)}))
    with path.open("rb") as fh:
        damaged = fh.read()
    again = mnist1d(tmp_path, num_samples=200).load()
    assert np.array_equal(again.x_train, good.x_train) and np.array_equal(again.y_test, good.y_test)
    assert "is unusable" in caplog.text and path.read_bytes() != damaged  # replaced by a good file
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["y_train"], good.y_train)


def test_mnist1d_tiny_slices_are_the_same_every_time(tmp_path):
    def tensors(**kwargs):
        dm = mnist1d(tmp_path, train_subset=64, test_subset=32, val_size=500, **kwargs)
        dm.setup()
        return [t for ds in (dm.train_set, dm.val_set, dm.test_set) for t in ds.tensors]

    first, second, resplit = tensors(), tensors(), tensors(split_seed=1)
    assert [len(t) for t in first] == [64, 64, 500, 500, 32, 32] and first[0].shape[1] == 40
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[2], resplit[2])  # the validation part follows split_seed


def test_bad_mnist1d_settings_are_one_clear_error(tmp_path):
    with pytest.raises(SsmoeError, match=r"num_samples=5000, data.train_split=1.0 leave no training or no test"):
        mnist1d(tmp_path, train_split=1.0)
    with pytest.raises(SsmoeError, match=r"makes signals of 40 values but data.in_features=64; set .*=40"):
        MNIST1D(in_features=64, num_classes=10, cache_dir=str(tmp_path)).load()


def test_without_the_mnist1d_package_the_cli_says_how_to_install_it(tmp_path):
    # A package of that name that fails to import, first on the path: as if mnist1d (or one of the
    # packages it imports) were not installed.
    shadow = tmp_path / "shadow" / "mnist1d"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'requests'\")\n")
    env = cli_env(tmp_path) | {"PYTHONPATH": str(shadow.parent)}
    proc = run_train(tmp_path, "data=mnist1d", "model=fcl", "logger=none", *FAST, env=env)
    assert proc.returncode == 2, proc.stderr
    (line,) = errors(proc.stderr)
    assert "mnist1d package, which failed to import (No module named 'requests'); pip install mnist1d" in line
    assert "Traceback" not in proc.stderr and "test accuracy" not in proc.stdout


# -- Letter recognition -----------------------------------------------------------------------------
@needs_letter
def test_letter_split_labels_and_tiny_slices(tmp_path):
    raw = letter(LETTER_DIR).load()
    assert raw.x_train.shape == (16000, 16) and raw.x_test.shape == (4000, 16)
    # The data's first row (UCI letter-recognition.data): T,2,8,3,5,1,8,13,0,6,6,10,8,0,8,0,8.
    assert raw.y_train[0] == ord("T") - ord("A")
    assert raw.x_train[0].tolist() == [2, 8, 3, 5, 1, 8, 13, 0, 6, 6, 10, 8, 0, 8, 0, 8]
    assert set(np.unique(raw.y_test)) == set(range(26)) and raw.x_train.max() == 15

    def tensors():
        dm = letter(LETTER_DIR, train_subset=100, test_subset=50, val_size=2000)
        dm.setup()
        return dm, [t for ds in (dm.train_set, dm.val_set, dm.test_set) for t in ds.tensors]

    dm, first = tensors()
    _, second = tensors()
    assert [len(t) for t in first] == [100, 100, 2000, 2000, 50, 50]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert dm.preprocessing.class_names[0] == "A" and dm.preprocessing.class_names[25] == "Z"


def test_missing_letter_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(SsmoeError, match=r"letter data not found \(looked for LetterRecognition.rda in .*`make data`"):
        letter(None, system_dir=None).load()
    with pytest.raises(SsmoeError, match=r"data.root=.* does not hold LetterRecognition.rda"):
        letter(tmp_path).load()


@needs_letter
def test_a_file_that_is_not_the_letter_data_is_one_clear_error(tmp_path):
    path = tmp_path / "LetterRecognition.rda"
    path.write_bytes((LETTER_DIR / "LetterRecognition.rda").read_bytes()[:5000])
    with pytest.raises(SsmoeError, match=r"is not a readable mlbench LetterRecognition.rda .*run `make data` again"):
        read_letter_rda(path)
    if (LETTER_DIR / "Satellite.rda").is_file():  # a good R file holding another data set
        path.write_bytes((LETTER_DIR / "Satellite.rda").read_bytes())
        with pytest.raises(SsmoeError, match=r"is not a readable mlbench LetterRecognition.rda \(KeyError"):
            read_letter_rda(path)


def test_a_corrupt_letter_file_fails_through_the_cli_with_one_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "LetterRecognition.rda").write_bytes(b"RDX3\n" + bytes(range(256)) * 4)
    proc = run_train(tmp_path, "data=letter", "data.root=bad", "model=fcl", "logger=none", *FAST)
    assert proc.returncode == 2, proc.stderr
    (line,) = errors(proc.stderr)
    assert line.startswith("ssmoe: error: bad/LetterRecognition.rda is not a readable mlbench LetterRecognition.rda")
    assert line.endswith("delete it and run `make data` again (or point data.root elsewhere)")
    assert "Traceback" not in proc.stderr and "test accuracy" not in proc.stdout


# -- Sizes flow from the data to every model --------------------------------------------------------
CASES = {
    "mnist1d": (40, 10, [str(i) for i in range(10)]),
    "letter": (16, 26, [chr(ord("A") + i) for i in range(26)]),
}


@pytest.mark.parametrize("data", ["mnist1d", pytest.param("letter", marks=needs_letter)])
def test_every_model_takes_its_sizes_from_the_data(tmp_path, data):
    in_features, num_classes, names = CASES[data]
    extra = [f"data.root={LETTER_DIR}"] if data == "letter" else []
    # One multirun: the three models share one process's start-up (imports), which dominates here.
    models = ["fcl", "sgmoe", "ptsne_moe"]
    proc = run_train(
        tmp_path, "-m", f"data={data}", f"model={','.join(models)}", "logger=none", "threads=1",
        "data.train_subset=256", "data.test_subset=200", *extra, *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blocks = proc.stdout.split("Outputs (config, log, checkpoint): ")[1:]
    assert len(blocks) == len(models), proc.stdout
    run_dirs = [Path(block.split("\n", 1)[0].strip()) for block in blocks]
    tables = proc.stdout.split("Outputs (config, log, checkpoint): ")[:-1]

    from ssmoe_cli.export import load_model

    raw = mnist1d(tmp_path / "cache" / "ssmoe" / "mnist1d").load() if data == "mnist1d" else letter(LETTER_DIR).load()
    x, y = torch.as_tensor(raw.x_test[:200]), torch.as_tensor(raw.y_test[:200])
    for model_name, run_dir, table in zip(models, run_dirs, tables, strict=True):
        model = load_model(run_dir / "model.safetensors")
        with torch.no_grad():
            logits = model(x).logits  # the file takes the dataset's raw inputs and standardises them itself
        assert logits.shape == (200, num_classes), model_name
        assert list(model.class_names) == names
        # The saved config's model section, resolved: its sizes are the data's.
        config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml").model, resolve=True)
        assert (config["in_features"], config["num_classes"]) == (in_features, num_classes), model_name
        if model_name == "fcl":
            sizes = [in_features, *config["hidden"], num_classes]
            assert table_value(table, "params total") == sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
            accuracy = float((logits.argmax(1) == y).float().mean())
            assert accuracy == pytest.approx(table_value(table, "test accuracy"), abs=5e-5)
    if data == "mnist1d":  # generated into the default cache of the run's environment
        assert len(list((tmp_path / "cache" / "ssmoe" / "mnist1d").glob("*.npz"))) == 1
