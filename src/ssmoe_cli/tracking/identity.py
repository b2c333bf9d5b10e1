"""A job's config identity: the hash by which skip_finished and ckpt_path=last recognise the same job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as dotted (key, value) pairs: {"a": {"b": 1}} -> ("a.b", 1)."""
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


# Keys that say where a job writes or how it is run, not what it computes: left out of the config hash
# by which a re-run sweep recognises jobs that already FINISHED. `threads` is not one of them: torch's
# reductions split by thread count, so results differ in the last digits (train.job records the
# effective count, torch's default included, before hashing).
VOLATILE_KEYS = (
    "paths",
    "callbacks",
    "logger",
    "skip_finished",
    "ckpt_path",
    "optimized_metric",  # what a sweeper is told, not what is computed
    "trainer.default_root_dir",
)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of what a job computes (the resolved config less VOLATILE_KEYS)."""
    items = sorted(
        (k, repr(v)) for k, v in flatten(config) if not any(k == v_ or k.startswith(v_ + ".") for v_ in VOLATILE_KEYS)
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
