"""Reading checkpoints as data: tensors and plain containers only, never pickled code.

A Lightning checkpoint is a pickle. `torch.load(weights_only=True)` refuses any pickle that names a
function or class outside torch's small allowlist (that is how a pickle runs code), but its error
text advises re-running with `weights_only=False`, which is exactly the unsafe thing. Every
checkpoint ssmoe reads goes through `load_checkpoint` (or, where Lightning does the reading,
through `checkpoint_error`), so a refused file becomes one line saying it is refused as unsafe.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from ssmoe_cli.errors import SsmoeError

# torch._weights_only_unpickler names the offending callable as "GLOBAL <module>.<name>".
_GLOBAL = re.compile(r"GLOBAL (\S+)")


def checkpoint_error(path: str | Path, exc: BaseException) -> SsmoeError:
    """The user-facing error for a checkpoint that `torch.load(weights_only=True)` could not read."""
    if isinstance(exc, pickle.UnpicklingError):
        found = _GLOBAL.search(str(exc))
        if found:
            return SsmoeError(
                f"checkpoint {path} refused as unsafe: loading it would need to unpickle code "
                f"({found.group(1)}); ssmoe reads checkpoints as weights only. Use a checkpoint that "
                "`ssmoe train` wrote, or train again"
            )
        return SsmoeError(
            f"checkpoint {path} refused: it cannot be read as weights only (corrupt, or it holds objects "
            "ssmoe does not read); use a checkpoint that `ssmoe train` wrote, or train again"
        )
    if isinstance(exc, FileNotFoundError):
        return SsmoeError(f"checkpoint {path} not found")
    if isinstance(exc, OSError):
        return SsmoeError(f"cannot read checkpoint {path}: {exc.strerror or exc}")
    # torch raises RuntimeError (zip reader) or EOFError for truncated or corrupt files.
    return SsmoeError(f"checkpoint {path} is corrupt or truncated and cannot be read ({type(exc).__name__})")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`; a file it refuses or cannot read raises SsmoeError."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, OSError, RuntimeError, EOFError) as exc:
        raise checkpoint_error(path, exc) from None
    if not isinstance(state, dict):
        raise SsmoeError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return state
