"""Expert-choice routing (Zhou et al. 2022): the experts choose their samples, not the reverse.

    s = softmax(x W_r)                      (B, E) router scores, over the experts of each sample
    c = min(B, ceil(capacity_factor * B * k / E))   samples each expert takes
    expert e takes the c samples of the batch with the highest s_be;
    weights_be = s_be at the chosen pairs, 0 elsewhere (the raw scores, as Zhou et al.; not
    renormalised per sample, so a row sums to at most 1)

k = model.k is the AVERAGE number of experts per sample (B * k / E samples per expert at
capacity_factor 1); a sample may get 0 or many experts. Load is balanced by construction, so no
balancing loss is needed; `z_loss` > 0 adds ST-MoE's router z-loss in training (base.py).

Samples no expert chose would otherwise get all-zero logits. Fallback: such a sample gets its
single highest-scoring expert, with weight s_be. `unrouted` counts them in the last forward pass
(a public int attribute); with the fallback the busiest expert may serve c + unrouted samples.

GateOutput for every dispatch: `weights` as above serves dense dispatch; `indices`/`values` are
(B, m), m = the largest number of experts any sample got in this batch, each row's chosen experts
by score descending, padded with pairs of value 0 (an unchosen expert): a zero-valued pair adds
0 * output, i.e. nothing, under pairs and capacity dispatch. Sizing m reads one count from the
device (free on CPU, a sync on GPU).

The routing depends on the whole batch. Small batches at inference: every expert takes at least
one sample (c >= 1), so a batch of B samples makes E * c pairs, E * c / B >= E / B experts per
sample on average instead of about capacity_factor * k. With B = 1, c = 1 and every expert takes
the one sample: all E experts run, each weighted by its score (a dense softmax mixture), about
E / (capacity_factor * k) times the expert compute of a sample in a large batch; B = 2 with E = 8,
k = 2 still gives 4 experts a sample. Evaluate in batches with B * cf * k / E >> 1 to keep the routing
sparse (the accounting runs the gate on chunks of up to 4,096 test samples: that regime).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmoe_cli.models.gating.base import GateOutput, loss_weight, z_loss_aux
from ssmoe_cli.models.gating.switch import LinearRouter, small_router


def expert_capacity(batch: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """c = min(B, ceil(capacity_factor * B * k / E)): how many samples of a batch each expert takes."""
    return min(batch, math.ceil(capacity_factor * batch * k / num_experts))


def expert_choice(scores: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """(chosen (B, E) bool, unrouted (B,) bool) for router scores (B, E): expert e takes the
    `capacity` samples with the highest scores[:, e]; a sample no expert took (unrouted) is then
    given its highest-scoring expert."""
    batch = scores.shape[0]
    if capacity >= batch:  # every expert takes every sample: no data-dependent step (vmap-safe)
        return torch.ones_like(scores, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool, device=scores.device)
    top = torch.topk(scores, capacity, dim=0).indices  # (c, E) sample ids per expert
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, top, True)
    unrouted = ~chosen.any(1)
    best = torch.zeros_like(chosen).scatter_(1, scores.argmax(1, keepdim=True), True)
    return chosen | (best & unrouted.unsqueeze(1)), unrouted


class ExpertChoiceGate(LinearRouter):
    """Expert-choice router: each expert takes its top-c samples of the batch by router score.

    `unrouted`: how many samples of the last forward batch no expert chose (they got the fallback).
    """

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        capacity_factor: float = 1.0,
        z_loss: float = 0.0,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        ok = isinstance(capacity_factor, int | float) and not isinstance(capacity_factor, bool)
        if not (ok and 0 < capacity_factor < math.inf):
            raise ValueError(
                f"gating.capacity_factor={capacity_factor!r}: must be a finite number > 0 "
                "(each expert takes ceil(capacity_factor * B * k / E) samples of a batch)"
            )
        self.num_experts, self.k = num_experts, k
        self.capacity_factor, self.z_loss = float(capacity_factor), loss_weight("gating.z_loss", z_loss)
        self.router = small_router(in_features, num_experts, init_scale)
        self.unrouted = 0

    def forward(self, x: Tensor) -> GateOutput:
        logits = self.router(x)
        scores = torch.softmax(logits, dim=1)
        capacity = expert_capacity(len(x), self.k, self.num_experts, self.capacity_factor)
        chosen, unrouted = expert_choice(scores.detach(), capacity)
        weights = scores * chosen  # gradient reaches W_r through the scores of the chosen pairs
        if capacity >= len(x):
            width, self.unrouted = self.num_experts, 0
        else:
            width, self.unrouted = int(chosen.sum(1).max()), int(unrouted.sum())
        # Chosen pairs first (scores >= 0 beat the -1 of the others), by score; the rest is padding.
        indices = torch.topk(torch.where(chosen, scores.detach(), -1.0), width, dim=1).indices
        values = weights.gather(1, indices)
        return GateOutput(weights, indices, values, z_loss_aux(logits, self.z_loss, self.training), None)

    def extra_repr(self) -> str:
        return f"k={self.k}, capacity_factor={self.capacity_factor}, z_loss={self.z_loss}"
