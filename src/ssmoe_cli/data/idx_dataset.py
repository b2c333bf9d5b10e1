"""IDX datasets (Fashion-MNIST, MNIST): where the files are found, and the download fallback.

The root is resolved in this order: ``data.root``, the user cache dir, the system directory that
a Debian package installs, else a download from the official mirror with an MD5 check.
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
        dirs = [Path(self.root).expanduser()] if self.root else []
        dirs.append(user_cache_dir() / self.name)
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
        looked = ", ".join(str(d) for d in self.candidates())
        fix = f"install the Debian package ({self.debian_package})" if self.debian_package else ""
        fix = f"{fix}, or " if fix else ""
        raise SsmoeError(
            f"{self.name} not found (looked in {looked}; {reason}). Fix: {fix}set data.root=DIR "
            f"to a directory holding {', '.join(s + '.gz' for s in SPLITS.values())}"
        )

    def _download(self, target: Path) -> dict[str, Path]:
        target.mkdir(parents=True, exist_ok=True)
        out = {}
        for key, stem in SPLITS.items():
            name = f"{stem}.gz"
            dest = target / name
            if not dest.is_file():
                with (
                    tempfile.NamedTemporaryFile(dir=target, delete=False) as tmp,
                    urllib.request.urlopen(self.mirror + name, timeout=30) as resp,
                ):
                    shutil.copyfileobj(resp, tmp)
                tmp_path = Path(tmp.name)
                if _md5(tmp_path) != self.md5[name]:
                    tmp_path.unlink()
                    raise ValueError(f"checksum mismatch for {name}")
                tmp_path.replace(dest)
            out[key] = dest
        return out

    def load(self) -> Arrays:
        files = self.resolve()
        remedy = "delete or replace the file (or point data.root elsewhere)"
        return Arrays(**{key: read_idx(path, remedy) for key, path in files.items()})
