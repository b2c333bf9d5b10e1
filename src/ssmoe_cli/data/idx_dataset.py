"""IDX datasets (Fashion-MNIST, MNIST): where the files are found, and the download fallback.

An explicit ``data.root`` is the user's choice and the only place looked at: the files there, or
(with download enabled and the directory existing) downloaded there; anything else is an error
naming it, never a silent fallback to another copy. With no root (the default): the user cache
dir, the system directory that a Debian package installs, else a download into the cache, from
the official mirror with an MD5 check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from ssmoe_cli.data.base import Arrays, TensorDataModule
from ssmoe_cli.data.idx import read_idx
from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)

SPLITS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssmoe"


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class IdxDataModule(TensorDataModule):
    """A dataset of four IDX files. Subclasses set the names, checksums and where to look."""

    name = "idx"
    mirror = ""
    md5: dict[str, str] = {}  # keyed by '<stem>.gz'
    system_dir: Path | None = None
    debian_package = ""

    def __init__(
        self, root: str | None = None, download: bool = True, system_dir: str | None = "default", **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.download = download
        # "default" keeps the class's system directory; None searches none (tests, strict setups).
        if system_dir != "default":
            self.system_dir = Path(system_dir) if system_dir else None

    # -- locating the files ----------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Where the files are looked for: an explicit root only, else the cache then the system dir."""
        if self.root:
            return [Path(self.root).expanduser()]
        dirs = [user_cache_dir() / self.name]
        if self.system_dir is not None:
            dirs.append(self.system_dir)
        return dirs

    @staticmethod
    def _find(directory: Path, stem: str) -> Path | None:
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                return directory / name
        return None

    def resolve(self) -> dict[str, Path]:
        """Paths of the four files: the first candidate dir holding all of them, else a download."""
        if self.root:
            self._check_root(Path(self.root).expanduser())
        for directory in self.candidates():
            found = {key: self._find(directory, stem) for key, stem in SPLITS.items()}
            if all(found.values()):
                log.info("%s: reading IDX files from %s", self.name, directory)
                return found  # type: ignore[return-value]
        reason = "download disabled (data.download=false)"
        if self.download:
            target = Path(self.root).expanduser() if self.root else user_cache_dir() / self.name
            try:
                log.info("%s: downloading from %s into %s", self.name, self.mirror, target)
                return self._download(target)
            except (OSError, ValueError) as exc:
                reason = f"download from {self.mirror} failed: {exc}"
        files = ", ".join(s + ".gz" for s in SPLITS.values())
        if self.root:
            raise SsmoeError(
                f"data.root={self.root} does not hold {self.name} ({reason}); put {files} there, "
                "or leave data.root unset to use the cache and system copies"
            )
        fix = f"install the Debian package ({self.debian_package}), or " if self.debian_package else ""
        looked = ", ".join(str(d) for d in self.candidates())
        raise SsmoeError(
            f"{self.name} not found (looked in {looked}; {reason}). Fix: {fix}set data.root=DIR "
            f"to a directory holding {files}"
        )

    def _check_root(self, root: Path) -> None:
        """An explicit root must be a readable directory: no other copy stands in for it."""
        if not root.exists():
            raise SsmoeError(
                f"data.root={self.root} does not exist; create it (the data is downloaded into it when "
                "data.download=true) or leave data.root unset to use the cache and system copies"
            )
        if not root.is_dir():
            raise SsmoeError(f"data.root={self.root} is not a directory; set it to the directory holding the files")
        if not os.access(root, os.R_OK | os.X_OK):
            raise SsmoeError(f"data.root={self.root} is not readable (permission denied); fix its permissions")

    def _download(self, target: Path) -> dict[str, Path]:
        target.mkdir(parents=True, exist_ok=True)
        out = {}
        for key, stem in SPLITS.items():
            name = f"{stem}.gz"
            dest = target / name
            if not dest.is_file():
                self._fetch(self.mirror + name, dest, self.md5[name])
            out[key] = dest
        return out

    @staticmethod
    def _fetch(url: str, dest: Path, md5: str) -> None:
        """Download `url` to `dest` through a temporary file beside it: `dest` appears complete and
        checksummed or not at all, and no partial file is left behind on failure."""
        # The URL is opened first: an unreachable mirror creates no file at all.
        with (
            urllib.request.urlopen(url, timeout=30) as resp,
            tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp,
        ):
            tmp_path = Path(tmp.name)
            try:
                shutil.copyfileobj(resp, tmp)
            except BaseException:
                tmp_path.unlink(missing_ok=True)
                raise
        if _md5(tmp_path) != md5:
            tmp_path.unlink()
            raise ValueError(f"checksum mismatch for {dest.name}")
        tmp_path.replace(dest)

    def load(self) -> Arrays:
        files = self.resolve()
        remedy = "delete or replace the file (or point data.root elsewhere)"
        return Arrays(**{key: read_idx(path, remedy) for key, path in files.items()})
