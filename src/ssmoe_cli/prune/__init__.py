"""Pruning methods, applied as Lightning callbacks (config group `prune`, one module each):

- none: no pruning (prune/sparsity is the model's natural sparsity);
- stochasticnet: one random sparse connectivity fixed before training (Shafiee et al. 2015);
- magnitude: train -> prune smallest |w| -> retrain, in rounds (Han et al. 2015), or the gradual
  cubic schedule (Zhu & Gupta 2017);
- obd: Optimal Brain Damage, saliency h_kk w^2 / 2 (LeCun et al. 1990), Fisher or Hutchinson;
- obs: Optimal Brain Surgeon with its weight correction (Hassibi & Stork 1993), layer-wise as in OBC
  (Frantar & Alistarh 2022), the algebra in surgeon.py;
- random: the schedule of magnitude with random weights removed, the sanity baseline (Blalock et al. 2020);
- set: sparse from the start, smallest weights replaced by random new ones each epoch (Mocanu et al. 2018);
- rigl: sparse from the start, smallest weights replaced where the dense gradient is largest (Evci et al. 2020).

Every method reaches either a sparsity of the targeted weights (prune.target_sparsity, density) or a
budget, prune.target_nonzero: exactly that many nonzero inference parameters in the whole model.

All act through the masks of the models' Masked layers (ssmoe_cli.models.layers), selected by
role (hidden, output, route, gate) among the layers the model calls prunable, so accounting and
checkpoints see the pruned network. Shared pieces: masks.py (targets, sparsity, exact masks),
schedule.py (one Schedule value), callback.py (the Lightning callback every method subclasses);
for the methods that train sparse from the start, allocation.py (Erdos-Renyi, ERK, uniform layer
densities), rewire.py (the drop/grow update, the dense gradient) and dynamic.py (their callback).
"""

from ssmoe_cli.prune.callback import PruneContext, PruningCallback
from ssmoe_cli.prune.magnitude import MagnitudePruning, magnitude_prune, std_prune
from ssmoe_cli.prune.masks import (
    DEFAULT_TARGETS,
    ROLES,
    allocate,
    apply_masks,
    budget_sparsity,
    layer_table,
    prune_to,
    register_mask_hook,
    sparsity,
    target_layers,
)
from ssmoe_cli.prune.none import NoPruning
from ssmoe_cli.prune.obd import OBDPruning, fisher_diagonal, hutchinson_diagonal, obd_prune, obd_saliency
from ssmoe_cli.prune.obs import OBSPruning, collect_hessians, obs_prune
from ssmoe_cli.prune.random import RandomPruning, random_prune
from ssmoe_cli.prune.rigl import RigL
from ssmoe_cli.prune.schedule import Schedule
from ssmoe_cli.prune.set import SparseEvolutionaryTraining
from ssmoe_cli.prune.stochasticnet import StochasticNet, random_masks

__all__ = [
    "DEFAULT_TARGETS",
    "ROLES",
    "MagnitudePruning",
    "NoPruning",
    "OBDPruning",
    "OBSPruning",
    "PruneContext",
    "PruningCallback",
    "RandomPruning",
    "RigL",
    "Schedule",
    "SparseEvolutionaryTraining",
    "StochasticNet",
    "allocate",
    "apply_masks",
    "budget_sparsity",
    "collect_hessians",
    "fisher_diagonal",
    "hutchinson_diagonal",
    "layer_table",
    "magnitude_prune",
    "obd_prune",
    "obd_saliency",
    "obs_prune",
    "prune_to",
    "random_masks",
    "random_prune",
    "register_mask_hook",
    "sparsity",
    "std_prune",
    "target_layers",
]
