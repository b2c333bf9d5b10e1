"""Pruning methods, applied as Lightning callbacks (config group `prune`, one module each):

- none: no pruning (prune/sparsity is the model's natural sparsity);
- stochasticnet: one random sparse connectivity fixed before training (Shafiee et al. 2015);
- magnitude: train -> prune smallest |w| -> retrain, in rounds (Han et al. 2015), or the gradual
  cubic schedule (Zhu & Gupta 2017);
- obd: Optimal Brain Damage, saliency h_kk w^2 / 2 (LeCun et al. 1990), Fisher or Hutchinson.

All act through the masks of the models' Masked layers (ssmoe_cli.models.layers), selected by
role (hidden, output, route, gate) among the layers the model calls prunable, so accounting and
checkpoints see the pruned network. Shared pieces: masks.py (targets, sparsity, exact masks),
schedule.py (one Schedule value), callback.py (the Lightning callback every method subclasses).
"""

from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.magnitude import MagnitudePruning, magnitude_prune, std_prune
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
from ssmoe_cli.prune.none import NoPruning
from ssmoe_cli.prune.obd import OBDPruning, fisher_diagonal, hutchinson_diagonal, obd_prune, obd_saliency
from ssmoe_cli.prune.schedule import Schedule
from ssmoe_cli.prune.stochasticnet import StochasticNet, random_masks

__all__ = [
    "DEFAULT_TARGETS",
    "ROLES",
    "MagnitudePruning",
    "NoPruning",
    "OBDPruning",
    "PruneContext",
    "PruningCallback",
    "Schedule",
    "StochasticNet",
    "apply_masks",
    "fisher_diagonal",
    "hutchinson_diagonal",
    "layer_table",
    "magnitude_prune",
    "obd_prune",
    "obd_saliency",
    "prune_to",
    "random_masks",
    "register_mask_hook",
    "sparsity",
    "std_prune",
    "target_layers",
]
