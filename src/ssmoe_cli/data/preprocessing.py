"""What a data module does to the dataset's raw inputs before the network sees them, as a value.

Every dataset of ssmoe flattens each example to `in_features` values and standardises them with the
training part's scalar mean and std (data/base.py). A model only works on inputs prepared the same
way, so the exported file carries this value (with the class names) and the loaded model applies it
itself: users feed the raw inputs the dataset provides (e.g. 28x28 uint8 images).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ssmoe_cli.errors import SsmoeError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Preprocessing:
    """Flatten to `in_features`, then (x - mean) / std; outputs index `class_names`."""

    in_features: int
    mean: float
    std: float
    class_names: tuple[str, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs (N, ...) of any numeric dtype -> the float32 (N, in_features) the network takes."""
        import torch

        x = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected inputs of {self.in_features} values each, got {x.shape[1]}")
        return (x.to(torch.float32) - self.mean) / self.std

    def to_json(self) -> str:
        return json.dumps(
            {
                "input": "flatten_standardise",
                "in_features": self.in_features,
                "mean": self.mean,
                "std": self.std,
                "class_names": list(self.class_names),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """Parse and check the file's value (it is data from anywhere: plain numbers and strings only)."""
        try:
            raw: Any = json.loads(text)
        except ValueError as exc:
            raise SsmoeError(f"the file's preprocessing is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("input") != "flatten_standardise":
            raise SsmoeError(f"unknown preprocessing in the file: {text[:120]!r}")
        n, mean, std, names = (raw.get(k) for k in ("in_features", "mean", "std", "class_names"))
        numbers_ok = all((_int(v) or isinstance(v, float)) and math.isfinite(v) for v in (mean, std))
        if not (_int(n) and n > 0 and numbers_ok and std > 0 and _strings(names)):
            raise SsmoeError(f"invalid preprocessing in the file: {text[:120]!r}")
        return cls(n, float(mean), float(std), tuple(names))


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    # Printable and short: class names end up on terminals (`ssmoe export --info`).
    return isinstance(value, list) and all(isinstance(v, str) and v.isprintable() and len(v) <= 100 for v in value)


def numbered_classes(num_classes: int) -> Sequence[str]:
    """Class names of datasets whose labels are their names (digits 0-9)."""
    return [str(i) for i in range(num_classes)]
