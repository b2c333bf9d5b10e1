"""Noisy top-k gating of the sparsely-gated mixture of experts (SGMoE, Shazeer et al. 2017).

    H(x)_i = (x W_g)_i + N(0, 1) * (softplus((x W_noise)_i) + noise_epsilon)
    G(x)   = softmax(KeepTopK(H(x), k))

with W_g and W_noise zero at the start, noise only in training mode, and two balancing losses
(plus, with `z_loss` > 0, ST-MoE's router z-loss on the clean logits x W_g, base.py):

    L_importance = w_importance * CV(sum_x G(x))^2
    L_load       = w_load * CV(sum_x P(x, i))^2,
    P(x, i)      = Phi(((x W_g)_i - kth_excluding(H(x), k, i)) / noise_std_i)

CV^2 = population variance / mean^2 (the mean SQUARED; some ports divide by the mean): the
differentiable `cv_squared` of base.py, shared with the diagnostics. Without
noise (eval, or noisy=False) the load is the count of samples routed to each expert, as in
tensor2tensor, so nothing divides by a zero noise scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmoe_cli.models.gating.base import Gate, GateOutput, cv_squared, loss_weight, topk_softmax, z_loss_aux
from ssmoe_cli.models.layers import MaskedLinear, set_role


def prob_in_top_k(clean: Tensor, noisy: Tensor, noise_std: Tensor, k: int) -> Tensor:
    """P(x, i): probability that expert i stays in the top k if only its own noise is redrawn.

    tensor2tensor's _prob_in_top_k: the threshold expert i has to beat is the k-th largest of the
    OTHER experts' noisy logits, i.e. the (k+1)-th largest of H(x) if i is in the top k now, else
    the k-th largest. Needs k < num_experts (else P = 1 for every expert).
    """
    top = torch.topk(noisy, k + 1, dim=1).values
    threshold_if_in, threshold_if_out = top[:, k : k + 1], top[:, k - 1 : k]
    is_in = noisy > threshold_if_in
    normal = torch.distributions.Normal(0.0, 1.0)
    prob_if_in = normal.cdf((clean - threshold_if_in) / noise_std)
    prob_if_out = normal.cdf((clean - threshold_if_out) / noise_std)
    return torch.where(is_in, prob_if_in, prob_if_out)


class NoisyTopKGate(Gate):
    """SGMoE gate: linear logits plus learned Gaussian noise, keep the top k, softmax over them."""

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        noisy: bool = True,
        noise_epsilon: float = 1e-2,
        w_importance: float = 0.01,
        w_load: float = 0.01,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.k = num_experts, k
        self.noisy, self.noise_epsilon = noisy, noise_epsilon
        self.w_importance, self.w_load = w_importance, w_load
        self.z_loss = loss_weight("gating.z_loss", z_loss)
        self.w_gate = MaskedLinear(in_features, num_experts, bias=False)
        self.w_noise = MaskedLinear(in_features, num_experts, bias=False)
        # Zero start (paper, section 3): uniform gates and unit-ish noise, so every expert is tried.
        nn.init.zeros_(self.w_gate.weight)
        nn.init.zeros_(self.w_noise.weight)
        set_role(self, "gate")
        # Noise exists only in training mode: inference (and so accounting, pruning and export) never reads W_noise.
        self.w_noise.train_only = True

    def forward(self, x: Tensor, noise: Tensor | None = None) -> GateOutput:
        """``noise`` (B, E) replaces the N(0, 1) draw (tests); it is ignored when noise is off."""
        clean = self.w_gate(x)
        use_noise = self.noisy and self.training
        if use_noise:
            noise_std = F.softplus(self.w_noise(x)) + self.noise_epsilon
            if noise is None:
                noise = torch.randn_like(clean)
            logits = clean + noise * noise_std
        else:
            logits = clean
        weights, indices, values = topk_softmax(logits, self.k)

        importance = weights.sum(0)
        if use_noise and self.k < self.num_experts:
            load = prob_in_top_k(clean, logits, noise_std, self.k).sum(0)
        else:
            # Count of samples per expert: no gradient, but no division by a zero noise scale.
            # With k == num_experts every expert is always kept, so the count is exact too.
            load = torch.bincount(indices.flatten(), minlength=self.num_experts).to(weights.dtype)
        aux = {
            "importance": self.w_importance * cv_squared(importance),
            "load": self.w_load * cv_squared(load),
            # On the clean logits: the noise is a training device, the router's scale is x W_g's.
            **z_loss_aux(clean, self.z_loss, self.training),
        }
        return GateOutput(weights, indices, values, aux, None)

    def active_params(self) -> int:
        """Eval-mode pass: W_g only (the noise network is off at inference)."""
        return self.w_gate.nonzero_params()

    def active_macs(self) -> int:
        return self.w_gate.nonzero_weights()

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, noisy={self.noisy}, w_importance={self.w_importance}, w_load={self.w_load}, "
            f"z_loss={self.z_loss}"
        )
