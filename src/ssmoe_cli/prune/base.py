"""Moved: targets and masks live in ssmoe_cli.prune.masks, the schedule in ssmoe_cli.prune.schedule
and the Lightning callback in ssmoe_cli.prune.callback. These names stay importable from here until
the last caller has switched."""

from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.masks import (
    DEFAULT_TARGETS,
    ROLES,
    apply_masks,
    layer_table,
    prune_to,
    register_mask_hook,
    sparsity,
    target_layers,
)
from ssmoe_cli.prune.schedule import Schedule

__all__ = [
    "DEFAULT_TARGETS",
    "ROLES",
    "PruneContext",
    "PruningCallback",
    "Schedule",
    "apply_masks",
    "layer_table",
    "prune_to",
    "register_mask_hook",
    "sparsity",
    "target_layers",
]
