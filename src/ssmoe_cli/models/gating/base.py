"""The contract every gate implements (`Gate`), what it returns (`GateOutput`), and the pieces gates
share: the top-k softmax, the squared coefficient of variation of their balancing losses and the
router z-loss of every learned-logit router."""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import Tensor, nn


class GateOutput(NamedTuple):
    # (B, E) gate values, exactly 0 outside the kept experts. Rows sum to 1 for the token-choice
    # gates (top-k, softmax); expert_choice keeps the raw router scores of the pairs its experts
    # chose (Zhou et al. 2022), so its rows sum to at most 1 and a sample may have any number of experts.
    weights: Tensor
    # (B, m) long, kept expert ids sorted by gate value descending; m = k for the top-k gates.
    # Padding pairs (expert_choice: samples with fewer experts than m) have value 0 and so
    # contribute nothing to any dispatch.
    indices: Tensor
    values: Tensor  # (B, m) gate values of those experts (= weights.gather(1, indices))
    # Auxiliary losses ALREADY multiplied by their coefficients (scalar tensors); empty if none.
    aux: dict[str, Tensor]
    embedding: Tensor | None  # (B, 2) coordinates in the gate's 2-D map (ptsne), else None


class Gate(nn.Module, abc.ABC):
    """Base of every gate: which experts each sample visits, and with what weight.

    Built as ``Gate(in_features, num_experts, k, ...)``. A subclass implements `forward` (a
    GateOutput), `active_params` and `active_macs` (what one sample's eval-mode pass through the gate
    uses, for the model's accounting); every weight matrix should be a MaskedLinear so that pruning
    and accounting see it, and one only training reads (SGMoE's noise network) is marked
    ``layer.train_only = True``: accounting, pruning and the exported file then leave it out.
    Floating-point buffers the pass reads (centres, a temperature) count like parameters. The rest
    has defaults a gate without a map keeps: no `positions` (the topologies then place experts on a
    ring), nothing to `prepare`, no `embed`ding and no `diagnostics` of its own.
    """

    num_experts: int
    k: int

    @abc.abstractmethod
    def forward(self, x: Tensor) -> GateOutput:
        """Gate values of a batch (B, in_features); aux losses only in training mode."""

    @abc.abstractmethod
    def active_params(self) -> int:
        """Nonzero parameters (and float buffers) one sample's eval-mode pass through the gate uses;
        never the train-only layers'."""

    @abc.abstractmethod
    def active_macs(self) -> int:
        """Multiply-adds of one sample's eval-mode pass through the gate (nonzero weights)."""

    @property
    def positions(self) -> Tensor | None:
        """(E, 2) places of the experts in the gate's 2-D map (detached), or None without a map."""
        return None

    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """Fit what the gate needs before classification training (e.g. its map); default: nothing."""

    def embed(self, x: Tensor) -> Tensor | None:
        """(N, 2) map coordinates of x without gradient, for diagnostics; None without a map."""
        return None

    def diagnostics(self, x: Tensor) -> dict[str, float]:
        """Gate-specific measurements on held-out inputs x (eval mode), logged as gate/<name>."""
        return {}


def topk_softmax(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax over each row's k largest logits; the other experts get exactly 0.

    Returns (weights (B, E), indices (B, k) sorted by value descending, values (B, k)).

    k = 1: a softmax over one logit is the constant 1, so the gate would get no gradient from the
    task loss (a known bug of public SGMoE ports). Like the Switch Transformer (Fedus et al. 2021)
    we let the gradient flow through the full-softmax probability p of the chosen expert, but as
    a straight-through estimator, value = 1 + (p - p.detach()): the forward value stays exactly
    1 (rows sum to 1, as the interface promises) and the gradient is that of Switch's value p.
    """
    k = min(k, logits.shape[1])
    top, indices = torch.topk(logits, k, dim=1, sorted=True)
    if k == 1:
        p = torch.softmax(logits, dim=1).gather(1, indices)
        values = (p - p.detach()) + 1.0
    else:
        values = torch.softmax(top, dim=1)
    weights = torch.zeros_like(logits).scatter(1, indices, values)
    return weights, indices, values


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation var(x) / mean(x)^2 (population variance; Shazeer et al. 2017,
    not the var / mean of some ports), differentiable: the SGMoE balancing losses use it as is and
    the diagnostics take its float. One value, or a mean^2 below eps (all zeros), gives 0, not 0/0.

    Integer counts are computed in float32; a floating x keeps its dtype (float64 stays exact).
    """
    if not x.is_floating_point():
        x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    # clamp, not + eps: above eps the value is exactly var / mean^2 in any dtype.
    return x.var(unbiased=False) / (x.mean() ** 2).clamp_min(eps)


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss (Zoph et al. 2022), unweighted: mean over the batch of
    (logsumexp_e logits_be)^2. It keeps the router's logits small, so the softmax over them stays
    in a numerically safe range; computed on the clean (noise-free) logits."""
    return torch.logsumexp(logits, dim=1).square().mean()


def z_loss_aux(logits: Tensor, weight: float, training: bool) -> dict[str, Tensor]:
    """{"z_loss": weight * router_z_loss(logits)} in training mode with weight > 0, else {}: a
    gate merges it into its aux losses (which the training loss sums and logs as train/aux/z_loss)."""
    if training and weight > 0:
        return {"z_loss": weight * router_z_loss(logits)}
    return {}


def loss_weight(key: str, weight: float) -> float:
    """A gate's auxiliary-loss weight `key` checked: a finite number >= 0 (0 = off)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight < float("inf"):
        raise ValueError(f"{key}={weight!r}: must be a finite number >= 0 (an auxiliary loss weight; 0 = off)")
    return float(weight)
