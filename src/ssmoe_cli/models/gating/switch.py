"""Switch Transformer router (Fedus et al. 2021): a linear router, top-1, and its load-balancing loss.

    logits = x W_r                     (no bias; W_r ~ truncated normal, std sqrt(init_scale / in))
    p      = softmax(logits)           over all E experts
    G(x)   = top-k softmax of logits   (k = model.k, 1 for Switch proper)

k = 1 uses the value semantics of `topk_softmax` (base.py): the kept expert's value is 1 in the
forward pass with the gradient of its full-softmax probability p (Switch multiplies the expert's
output by p itself; the straight-through form keeps the gate's rows summing to 1 and gives W_r
the same gradient). Any k the model asks for works: a softmax over the k largest logits.

Training adds the auxiliary load-balancing loss (Fedus et al., eq. 4-6)

    switch_balance = alpha * E * sum_i f_i * P_i,
    f_i = (pairs routed to expert i) / (B * k)      (k = 1: fraction of samples whose top-1 is i)
    P_i = mean over the batch of p_i(x)

f is a count (no gradient); the loss trains the router through P. It is 1 * alpha when routing
and probabilities are uniform, larger when both concentrate on the same experts. With `z_loss` > 0
ST-MoE's router z-loss is added too (base.py). Both are training-only.

The router itself drops nothing: Switch's expert capacity is the model's `model.capacity_factor`
(moe.py's capacity dispatch owns buffers and dropped pairs); conf/gating/switch.yaml says to run
it with `model.capacity_factor=1.25`, the paper's training value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssmoe_cli.models.gating.base import Gate, GateOutput, loss_weight, topk_softmax, z_loss_aux
from ssmoe_cli.models.layers import MaskedLinear, set_role


def small_router(in_features: int, num_experts: int, init_scale: float) -> MaskedLinear:
    """A bias-free router layer initialised as Switch does (section 2.4): truncated normal (at two
    standard deviations), std sqrt(init_scale / in_features); 0.1, ten times below the default
    scale, made their training stable. Random, not zero: ties would make every sample pick alike."""
    if not (isinstance(init_scale, int | float) and not isinstance(init_scale, bool) and 0 < init_scale < math.inf):
        raise ValueError(
            f"gating.init_scale={init_scale!r}: must be a finite number > 0 (router init variance x in_features)"
        )
    layer = MaskedLinear(in_features, num_experts, bias=False)
    std = math.sqrt(init_scale / in_features)
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    return set_role(layer, "gate")


def switch_balance_loss(probs: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Unweighted Switch load-balancing loss E * sum_i f_i * P_i: probs (B, E) the full router
    softmax, indices (B, k) the chosen experts; f_i = share of the B * k pairs routed to i."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).to(probs.dtype)
    f = counts / indices.numel()
    return num_experts * (f * probs.mean(0)).sum()


class LinearRouter(Gate):
    """Base of the gates whose eval-mode pass is one bias-free linear router (`self.router`, from
    `small_router`): its nonzero weights are the gate's active parameters and multiply-adds."""

    router: MaskedLinear

    def active_params(self) -> int:
        return self.router.nonzero_params()

    def active_macs(self) -> int:
        return self.router.nonzero_weights()


class SwitchGate(LinearRouter):
    """Switch Transformer router: top-k (k = 1 by the paper) of linear logits, balancing loss."""

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int = 1,
        alpha: float = 0.01,
        z_loss: float = 0.0,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.k = num_experts, k
        self.alpha, self.z_loss = loss_weight("gating.alpha", alpha), loss_weight("gating.z_loss", z_loss)
        self.router = small_router(in_features, num_experts, init_scale)

    def forward(self, x: Tensor) -> GateOutput:
        logits = self.router(x)
        weights, indices, values = topk_softmax(logits, self.k)
        aux: dict[str, Tensor] = {}
        if self.training:
            if self.alpha > 0:
                probs = torch.softmax(logits, dim=1)
                aux["switch_balance"] = self.alpha * switch_balance_loss(probs, indices, self.num_experts)
            aux.update(z_loss_aux(logits, self.z_loss, self.training))
        return GateOutput(weights, indices, values, aux, None)

    def extra_repr(self) -> str:
        return f"k={self.k}, alpha={self.alpha}, z_loss={self.z_loss}"
