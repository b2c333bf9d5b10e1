"""The interface every gate returns, and the top-k softmax they share."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GateOutput(NamedTuple):
    weights: Tensor  # (B, E) gate values, exactly 0 outside the kept experts, rows sum to 1
    indices: Tensor  # (B, k) long, kept expert ids, sorted by gate value descending
    values: Tensor  # (B, k) gate values of those experts (= weights.gather(1, indices))
    # Auxiliary losses ALREADY multiplied by their coefficients (scalar tensors); empty if none.
    aux: dict[str, Tensor]
    embedding: Tensor | None  # (B, 2) coordinates in the gate's 2-D map (ptsne), else None


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
