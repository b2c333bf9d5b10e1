"""No pruning. Every run still has a prune callback, so prune/sparsity is always logged: here it
is the model's natural sparsity (masked route padding, weights that are exactly zero)."""

from __future__ import annotations

from collections.abc import Sequence

from ssmoe_cli.prune.callback import PruningCallback


class NoPruning(PruningCallback):
    """Prunes nothing; keeps existing masks enforced and logs prune/sparsity over `targets`."""

    needs_targets = False  # measuring an empty selection is harmless: it reads 0.0

    def __init__(self, targets: Sequence[str] | None = None) -> None:
        super().__init__(targets=targets)
