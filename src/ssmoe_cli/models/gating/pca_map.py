"""PCA-map gate: the t-SNE gate's spatial routing on a fixed linear 2-D map (a routing control).

The map is y = W (x - mean), W the two leading principal axes of the training inputs, fitted once
in ``prepare`` and never trained. Everything after the map is the t-SNE gate's (ptsne.py): expert e
at centre c_e, placed by ptsne's k-means++ (or grid) on the mapped training data, and

    logits_e = -||y - c_e||^2 / temperature,   G(x) = softmax(KeepTopK(logits, k))

with ptsne's "auto" temperature. So against ptsne the only difference is the map: PCA instead of
the parametric t-SNE net. It asks whether the t-SNE objective is needed, or any 2-D projection
that keeps the data's broad layout does as well.

The map is a MaskedLinear(in, 2) with role "gate", frozen (requires_grad False), stored as
weight W and bias -W mean: the linear counterpart of ptsne's frozen net f, counted, exported and
prunable (with prune.targets including gate) the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmoe_cli.models.accounting import nonzero_macs
from ssmoe_cli.models.gating.base import GateOutput
from ssmoe_cli.models.gating.ptsne import grid, kmeans
from ssmoe_cli.models.gating.spatial import CentreGate, principal_axes, subsample
from ssmoe_cli.models.layers import MaskedLinear, set_role


class PCAMapGate(CentreGate):
    """Routes each sample to the experts whose centres are nearest to it in the 2-D PCA map."""

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        centres: str = "kmeans",
        temperature: float | str = "auto",
        temperature_margin: float = 1.0,
        fit_samples: int | None = 10000,
    ) -> None:
        if centres not in ("grid", "kmeans"):
            raise ValueError(f"centres={centres!r}: choose grid or kmeans")
        if fit_samples is not None and fit_samples < 2:
            raise ValueError(f"fit_samples={fit_samples}: at least 2 points (or null: all) to fit a PCA")
        # Until prepare() places them, centres sit on a unit grid, as ptsne's.
        init = grid(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), num_experts)
        super().__init__(num_experts, k, init, temperature, temperature_margin)
        self.centres_mode, self.fit_samples = centres, fit_samples
        self.net = set_role(MaskedLinear(in_features, 2), "gate")
        self.net.requires_grad_(False)  # fixed: PCA, not learned

    @property
    def positions(self) -> Tensor:
        """(E, 2) expert places in the map: the centres."""
        return self.centres.detach()

    @torch.no_grad()
    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """PCA of (a subsample of) the training inputs, then centres on the whole mapped training set."""
        mean, axes = principal_axes(subsample(x_train, self.fit_samples, generator), 2)
        weight = axes.to(self.net.weight)
        self.net.weight.copy_(weight * self.net.mask)  # a masked weight stays zero
        self.net.bias.copy_(-(self.net.weight @ mean.to(weight)))
        y = self.embed(x_train.to(weight.device))
        placed = grid(y, self.num_experts) if self.centres_mode == "grid" else kmeans(y, self.num_experts, generator)
        self.set_centres(placed, y)

    @torch.no_grad()
    def embed(self, x: Tensor, chunk: int = 8192) -> Tensor:
        """The 2-D map coordinates of x, in chunks, without gradient."""
        return torch.cat([self.net(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    def forward(self, x: Tensor) -> GateOutput:
        y = self.net(x)
        weights, indices, values = self.route(y)
        return GateOutput(weights, indices, values, {}, y)

    def active_macs(self) -> int:
        """The map's nonzero weights plus one multiply-add per nonzero centre coordinate (2 E)."""
        return nonzero_macs(self.net) + self.centre_macs()

    def extra_repr(self) -> str:
        return f"k={self.k}, centres={self.centres_mode}, temperature={self.temperature_mode}"
