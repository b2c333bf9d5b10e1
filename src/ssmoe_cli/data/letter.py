"""Letter recognition (Frey & Slate 1991, UCI): 20,000 letters as 16 integer features, 26 classes.

Read from the R data file ``LetterRecognition.rda`` of the CRAN package mlbench, which Debian ships as
``r-cran-mlbench``. R is not needed: ``make data`` unpacks the package's files (``apt-get download`` and
``dpkg -x``) into ``~/.cache/ssmoe/mlbench``, and the PyPI package ``rdata`` parses the file.
Split as the data's documentation says it is customarily used: the first 16,000 rows train, the last
4,000 test.
"""

from __future__ import annotations

import logging
import os
import string
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ssmoe_cli.data.base import Arrays, TensorDataModule
from ssmoe_cli.data.idx_dataset import user_cache_dir
from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)

FILE = "LetterRecognition.rda"
OBJECT = "LetterRecognition"  # the data frame the file holds: lettr (factor A-Z) and 16 numeric columns
N_ROWS, N_TRAIN = 20_000, 16_000
INSTALL = (
    "run `make data` (it unpacks Debian's r-cran-mlbench into the cache, ~/.cache/ssmoe/mlbench by default; "
    "no R needed)"
)


class LetterRecognition(TensorDataModule):
    """mlbench's LetterRecognition: first 16,000 rows train, last 4,000 test; labels A..Z -> 0..25."""

    name = "letter"
    # Where Debian's r-cran-mlbench puts the file when installed with R (apt-get install r-cran-mlbench).
    system_dir: Path | None = Path("/usr/lib/R/site-library/mlbench/data")

    def __init__(self, root: str | None = None, system_dir: str | None = "default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        # "default" keeps the class's system directory; None searches none (tests, strict setups).
        if system_dir != "default":
            self.system_dir = Path(system_dir) if system_dir else None

    @property
    def class_names(self) -> list[str]:
        return list(string.ascii_uppercase[: self.num_classes])

    def candidates(self) -> list[Path]:
        """Where the file is looked for: an explicit root only, else the cache then the system dir."""
        if self.root:
            return [Path(self.root).expanduser()]
        dirs = [user_cache_dir() / "mlbench"]
        if self.system_dir is not None:
            dirs.append(self.system_dir)
        return dirs

    def resolve(self) -> Path:
        """The first candidate directory's LetterRecognition.rda; a one-line error naming the fix if none has it."""
        for directory in self.candidates():
            path = directory / FILE
            if path.is_file():
                if not os.access(path, os.R_OK):
                    raise SsmoeError(f"{path} is not readable (permission denied); fix its permissions")
                return path
        if self.root:
            raise SsmoeError(
                f"data.root={self.root} does not hold {FILE}; set data.root to the directory holding it "
                f"(mlbench's data/ folder), or leave data.root unset and {INSTALL}"
            )
        looked = ", ".join(str(d) for d in self.candidates())
        raise SsmoeError(f"letter data not found (looked for {FILE} in {looked}); {INSTALL}, or set data.root=DIR")

    def load(self) -> Arrays:
        path = self.resolve()
        log.info("letter: reading %s", path)
        x, y = read_letter_rda(path)
        return Arrays(x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def read_letter_rda(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of mlbench's LetterRecognition.rda: x (20000, 16) uint8 in 0..15, y (20000,) int64 in 0..25
    (A..Z). A file that is not that data set is a one-line error saying how to replace it."""
    remedy = "delete it and run `make data` again (or point data.root elsewhere)"
    try:
        import rdata
    except ImportError as exc:
        raise SsmoeError(f"data=letter needs the rdata package ({exc}); pip install rdata") from None
    try:
        with warnings.catch_warnings():
            # mlbench's files declare no string encoding; rdata warns and assumes ASCII, which the letters are.
            warnings.simplefilter("ignore", UserWarning)
            frame = rdata.conversion.convert(rdata.parser.parse_file(path))[OBJECT]
        letters = frame.iloc[:, 0]
        names = [str(c) for c in letters.cat.categories]
        features = frame.iloc[:, 1:].to_numpy(dtype=np.float64)
        codes = letters.cat.codes.to_numpy()
    except Exception as exc:  # rdata raises many types (parse, decompression, conversion); all mean a bad file
        raise SsmoeError(f"{path} is not a readable mlbench {FILE} ({type(exc).__name__}: {exc}); {remedy}") from None
    problem = _check(features, codes, names)
    if problem:
        raise SsmoeError(f"{path} is not mlbench's letter data: {problem}; {remedy}")
    # Labels by letter, not by the factor's level order, so A is 0 and Z is 25 whatever the levels are.
    index = np.array([string.ascii_uppercase.index(n) for n in names])
    return features.astype(np.uint8), index[codes].astype(np.int64)


def _check(features: np.ndarray, codes: np.ndarray, names: list[str]) -> str:
    """What is wrong with the parsed frame ('' if nothing)."""
    if features.shape != (N_ROWS, 16):
        return f"expected {N_ROWS} rows of 16 features, found {features.shape}"
    if not set(names) <= set(string.ascii_uppercase):
        return f"labels {names[:5]}... are not capital letters"
    if (codes < 0).any():
        return "some labels are missing"
    in_range = np.isfinite(features).all() and features.min() >= 0 and features.max() <= 15
    if not (in_range and np.array_equal(features, np.round(features))):
        return "features are not integers 0..15"
    return ""
