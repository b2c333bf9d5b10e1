"""MNIST-1D (Greydanus 2020): 1-D signals of 40 values made from 10 digit-like templates.

The data are generated, never downloaded: the PyPI package ``mnist1d`` builds them with numpy and
scipy (``make_dataset``); its ``get_dataset`` would fetch or unpickle a file and is never called.
Generation takes about a second, so the arrays are cached as a plain ``.npz`` (read with
``allow_pickle=False``) under ``~/.cache/ssmoe/mnist1d/<key>.npz``, the key a hash of the generator's
arguments and the package's version. A cache file that cannot be read or does not match its key
is generated again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ssmoe_cli.data.base import Arrays, TensorDataModule
from ssmoe_cli.data.idx_dataset import user_cache_dir
from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)

SPLITS = ("x_train", "y_train", "x_test", "y_test")
INSTALL_HINT = "pip install mnist1d (or reinstall ssmoe: pip install -e .)"


def _generator() -> tuple[Any, Any, str]:
    """mnist1d's make_dataset, get_dataset_args and version; a one-line error when it cannot be imported.

    Importing the package also imports requests, pickle and matplotlib (its __init__ pulls in its
    download and plotting helpers); only the two generator functions are used here.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise SsmoeError(
            f"data=mnist1d needs the mnist1d package, which failed to import ({exc}); {INSTALL_HINT}"
        ) from None
    return make_dataset, get_dataset_args, metadata.version("mnist1d")


class MNIST1D(TensorDataModule):
    """MNIST-1D with the package's default arguments (5,000 signals: 4,000 train, 1,000 test)."""

    name = "mnist1d"

    def __init__(
        self,
        num_samples: int = 5000,
        train_split: float = 0.8,
        seed: int = 42,
        cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # make_dataset draws num_samples // 10 signals per class and splits them at train_split.
        if num_samples < 20 or not 0 < train_split < 1:
            raise SsmoeError(
                f"data.num_samples={num_samples}, data.train_split={train_split} leave no training or no test "
                "signals; choose num_samples >= 20 and 0 < train_split < 1 (defaults: 5000, 0.8)"
            )
        self.num_samples, self.train_split, self.seed = num_samples, train_split, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else user_cache_dir() / self.name

    def generator_args(self, defaults: dict[str, Any], version: str) -> dict[str, Any]:
        """The arguments make_dataset gets: its defaults with this config's three overrides."""
        args = {k: v for k, v in defaults.items() if k != "url"}  # the download address plays no part
        args.update(num_samples=self.num_samples, train_split=self.train_split, seed=self.seed)
        if args["final_seq_length"] != self.in_features:
            raise SsmoeError(
                f"mnist1d {version} makes signals of {args['final_seq_length']} values but "
                f"data.in_features={self.in_features}; set data.in_features={args['final_seq_length']}"
            )
        return args

    def load(self) -> Arrays:
        make_dataset, get_dataset_args, version = _generator()
        args = self.generator_args(get_dataset_args(as_dict=True), version)
        # The package's version is part of the key: a release that changes the generator gets its own file.
        spec = json.dumps({"mnist1d": version, "args": args}, sort_keys=True)
        path = self.cache_dir / f"{hashlib.sha256(spec.encode()).hexdigest()[:16]}.npz"
        cached = self._read_cache(path, spec)
        if cached is not None:
            return cached
        arrays = generate(make_dataset, args)
        self._write_cache(path, spec, arrays)
        return arrays

    def _read_cache(self, path: Path, spec: str) -> Arrays | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["spec"]) != spec:
                    raise ValueError("it was made with other arguments")
                arrays = Arrays(**{key: npz[key] for key in SPLITS})
            self._check_cached(arrays)
        except Exception as exc:  # a zip, npy or content error alike: the file is generated again
            log.warning("mnist1d: cache file %s is unusable (%s); generating the data again", path, exc)
            return None
        log.info("mnist1d: read from cache %s", path)
        return arrays

    def _check_cached(self, arrays: Arrays) -> None:
        """Shapes and dtypes a file of ours has; anything else (truncated, edited, foreign) is unusable."""
        for split in ("train", "test"):
            x, y = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
            if x.ndim != 2 or x.shape[1] != self.in_features or x.dtype.kind != "f":
                raise ValueError(f"x_{split} has shape {x.shape} and dtype {x.dtype}")
            if y.shape != (len(x),) or y.dtype.kind not in "iu":
                raise ValueError(f"y_{split} has shape {y.shape} and dtype {y.dtype}")

    def _write_cache(self, path: Path, spec: str, arrays: Arrays) -> None:
        """Write through a temporary file beside the target: the cache file appears whole or not at all.
        The cache only saves time, so a directory that cannot be written is a warning, not an error."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                tmp_path = Path(tmp.name)
                try:
                    np.savez(tmp, spec=np.array(spec), **{key: getattr(arrays, key) for key in SPLITS})
                except BaseException:
                    tmp_path.unlink(missing_ok=True)
                    raise
            os.replace(tmp_path, path)
            log.info("mnist1d: generated and cached in %s", path)
        except OSError as exc:
            log.warning("mnist1d: could not cache the generated data in %s (%s)", path.parent, exc)


def generate(make_dataset: Any, args: dict[str, Any]) -> Arrays:
    """Run mnist1d's make_dataset on `args`, leaving the global RNGs as they were.

    make_dataset seeds numpy's and Python's global generators (its set_seed) and draws from them;
    restoring their states keeps a run's other random draws independent of whether the cache hit.
    """
    from types import SimpleNamespace

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(SimpleNamespace(**args))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Arrays(
        x_train=np.asarray(data["x"], dtype=np.float32),
        y_train=np.asarray(data["y"], dtype=np.int64),
        x_test=np.asarray(data["x_test"], dtype=np.float32),
        y_test=np.asarray(data["y_test"], dtype=np.int64),
    )
