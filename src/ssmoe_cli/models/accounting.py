"""Parameter and FLOP accounting, read from the masks of the layers (not from configs).

Everything counts what INFERENCE uses: weights only training reads (layers marked `train_only`,
e.g. SGMoE's noise network W_noise) are left out of every count below and reported apart as
params/train_only; floating-point buffers inference reads (the t-SNE gate's centres and
temperature) count like parameters. Masks and integer index buffers are structure, not weights.

Definitions (the metrics contract, docs/configuration.md; names in ssmoe_cli.metrics):
- params/total: every inference parameter (and float buffer), masked or not.
- params/nonzero: those neither masked out nor exactly zero.
- params/active_per_sample: mean number of nonzero parameters one sample's forward pass uses.
- flops/per_sample: mean multiply-adds of the ideal sparse pass of one sample: one per nonzero
  weight the sample's pass uses (masked and zero weights cost nothing; biases, activations and
  the gate's softmax are not counted).
- params/train_only: parameters only training uses (not in any count above).
- params/gate_nonzero (mixtures of experts): the gate's share of params/nonzero, as a count;
  params/gate_share_nonzero and params/gate_share_active: the fractions of params/nonzero and of
  params/active_per_sample that are the gate's (every sample's pass reads the whole gate).
- compression/ratio_vs_fcl: nonzero parameters of the baseline network / params/nonzero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmoe_cli import metrics as names
from ssmoe_cli.models.base import Model
from ssmoe_cli.models.layers import MaskedLinear, masked_layers, train_only_layers


@dataclass(frozen=True)
class Accounting:
    """One model's counts (see the module docstring); the gate's fields are None without a gate."""

    params_total: int
    params_nonzero: int
    active_per_sample: float
    flops_per_sample: float
    train_only: int = 0
    gate_nonzero: int | None = None  # nonzero inference parameters of the gate
    gate_active: float | None = None  # of active_per_sample, the gate's (the whole gate, every sample)

    def metrics(self) -> dict[str, float]:
        """The counts under their MLflow names (ssmoe_cli.metrics); gate shares only with a gate."""
        out = {
            names.PARAMS_TOTAL: float(self.params_total),
            names.PARAMS_NONZERO: float(self.params_nonzero),
            names.PARAMS_ACTIVE: float(self.active_per_sample),
            names.FLOPS: float(self.flops_per_sample),
            names.PARAMS_TRAIN_ONLY: float(self.train_only),
        }
        if self.gate_nonzero is not None:
            out[names.PARAMS_GATE_NONZERO] = float(self.gate_nonzero)
            out[names.GATE_SHARE_NONZERO] = _share(self.gate_nonzero, self.params_nonzero)
        if self.gate_active is not None:
            out[names.GATE_SHARE_ACTIVE] = _share(self.gate_active, self.active_per_sample)
        return out


def _share(part: float, whole: float) -> float:
    # A model pruned to nothing has no share to speak of; 0 rather than 0/0.
    return float(part) / float(whole) if whole > 0 else 0.0


def _train_only_ids(module: nn.Module) -> set[int]:
    return {id(t) for m in train_only_layers(module).values() for t in (m.weight, m.bias) if t is not None}


def inference_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The parameters and floating-point buffers inference reads (each once): not the train-only
    layers' weights, not masks or integer index buffers."""
    skip = _train_only_ids(module)
    params = [p for p in module.parameters() if id(p) not in skip]
    buffers = [b for b in module.buffers() if b.is_floating_point() and id(b) not in skip]
    return params + buffers


def total_params(module: nn.Module) -> int:
    """Every inference parameter and float buffer, masked or not (train-only weights excluded)."""
    return sum(t.numel() for t in inference_tensors(module))


def train_only_params(module: nn.Module) -> int:
    """Parameters of the layers only training uses (e.g. SGMoE's W_noise); 0 for most models."""
    skip = _train_only_ids(module)
    return sum(p.numel() for p in module.parameters() if id(p) in skip)


def nonzero_params(module: nn.Module) -> int:
    """Nonzero inference parameters and float buffers; masked weights count as zero whatever their
    stored value. This is params/nonzero and the count `prune.target_nonzero` budgets."""
    masked = {id(m.weight): m for m in masked_layers(module)}
    count = 0
    for t in inference_tensors(module):
        owner = masked.get(id(t))
        count += owner.nonzero_weights() if owner is not None else int(torch.count_nonzero(t))
    return count


def nonzero_macs(module: nn.Module) -> int:
    """Multiply-adds of one pass of one sample through every inference MaskedLinear of the module."""
    return sum(m.nonzero_weights() for m in masked_layers(module) if isinstance(m, MaskedLinear) and not m.train_only)


def dense_accounting(module: nn.Module) -> Accounting:
    """Accounting of a network whose every weight is used by every sample (FCL, baselines)."""
    nonzero = nonzero_params(module)
    return Accounting(
        total_params(module), nonzero, float(nonzero), float(nonzero_macs(module)), train_only_params(module)
    )


def account(model: nn.Module, x: torch.Tensor | None = None) -> Accounting:
    """A Model's own accounting (a mixture of experts' depends on the routing of x); any other
    nn.Module is counted as dense."""
    return model.accounting(x) if isinstance(model, Model) else dense_accounting(model)
