"""Every run and every sweep its own output folder, created atomically.

`hydra.run.dir` / `hydra.sweep.dir` name a folder after the time to the second, so two runs started
in the same second would share it and overwrite each other's checkpoint, config and model. The
`unique_dir` resolver (conf/hydra/default.yaml) claims the folder instead: `os.mkdir` either creates
it or fails because it exists, in which case the next name (`_1`, `_2`, ...) is tried. Claiming is
atomic across processes, so no two runs ever get the same folder.

Hydra resolves those keys several times per run (the launcher, `run_job`, Lightning's DDP launcher,
the run's tags); the resolver is registered with `use_cache=True`, so the first call claims and every
later one returns the same folder. Hydra copies that cache into each sweep job's config (as it does
for `${now:...}`), so the jobs of a sweep share the one sweep folder. DDP worker processes get the
claimed folder as a literal `hydra.run.dir=...` from Lightning and do not claim another.

`CreateOutputDir` (a Hydra callback) claims the folder before Hydra's own `mkdir`, so a folder that
cannot be created (`hydra.run.dir=/proc/nope`, a read-only directory) is one line, not a traceback.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from ssmoe_cli.errors import SsmoeError

RESOLVER = "unique_dir"


def claim_dir(base: str) -> str:
    """Create `base`, or `base_1`, `base_2`, ... (the first that does not exist yet), and return it."""
    parent = os.path.dirname(base)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        for n in itertools.count():
            path = base if n == 0 else f"{base}_{n}"
            try:
                os.mkdir(path)  # atomic: exactly one process can create a given name
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise _cannot_create(exc.filename or base, exc) from None
    raise AssertionError("unreachable")


def ensure_dir(path: str) -> None:
    """An explicit folder (hydra.run.dir=DIR, or the one a DDP worker is given): create it if needed."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(exc.filename or path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SsmoeError(f"cannot write to the output folder {path}; choose another with hydra.run.dir=DIR")


def _cannot_create(path: Any, exc: OSError) -> SsmoeError:
    return SsmoeError(
        f"cannot create the output folder {path}: {exc.strerror or exc}; choose a writable place with "
        "hydra.run.dir=DIR (one run) or hydra.sweep.dir=DIR (a sweep), or run from a writable directory"
    )


def register_resolver() -> None:
    """Register `${unique_dir:...}` (idempotent). use_cache: one folder per config, however often resolved."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, claim_dir, use_cache=True)


# At import: joblib and submitit workers unpickle this module's callback before they resolve the
# sweep folder, and a resolver must be registered even where its value comes from the cache.
register_resolver()


class CreateOutputDir(Callback):
    """Claim (or create) the run's or the sweep's folder before Hydra does; a failure is one line, exit 2."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._create(config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._create(config, "hydra.sweep.dir")

    @staticmethod
    def _create(config: Any, key: str) -> None:
        try:
            node = OmegaConf.select(config, key, throw_on_resolution_failure=True)
            path = str(node)
            # A literal folder (given by the user, or by Lightning to a DDP worker) is created here;
            # one named through the resolver was claimed when resolved just above.
            ensure_dir(path)
        except SsmoeError as exc:
            _fail(str(exc))
        except Exception as exc:  # OmegaConf wraps the resolver's error
            cause = exc.__cause__ if isinstance(exc.__cause__, SsmoeError) else None
            if cause is None:
                raise
            _fail(str(cause))


def _fail(message: str) -> None:
    # Hydra prints its own traceback for an exception raised here; SystemExit passes through it.
    print(f"ssmoe: error: {message}", file=sys.stderr)
    sys.exit(SsmoeError.exit_code)
