"""Input k-means gate: the t-SNE gate's spatial routing with no map at all (a routing control).

Expert e sits at a centre c_e in the INPUT space, placed once in ``prepare`` by ptsne's k-means
(k-means++ seeding from the generator) on at most ``fit_samples`` random training points, and

    logits_e = -||x - c_e||^2 / temperature,   G(x) = softmax(KeepTopK(logits, k))

with ptsne's "auto" temperature computed the same way, from the distances between neighbouring
centres (here in input units). Against ptsne the difference is the 2-D map: routing by input
locality alone. It asks whether the map is needed. Nothing is trained: the centres are buffers.

Algebraically this is a fixed linear gate: the logits equal (2 x.c_e - ||c_e||^2) / temperature
up to a per-sample constant, so a sample's pass reads the E x D centres and costs E x D
multiply-adds (their nonzero coordinates), like a softmax gate's weight matrix.

`positions` (where a topology places the experts, e.g. the small-world links of ptsne_moe) are the
centres' coordinates on their own two leading principal axes: classical MDS of the centres, the
2-D linear picture that best keeps their distances. So the topology still links experts whose
regions are near in input space, as ptsne_moe links neighbouring centres of its map, and the
control changes the routing only. `embed` stays None: samples have no 2-D map, so the map
diagnostics (T(12), 1-NN) and map plots do not apply.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmoe_cli.models.gating.base import GateOutput
from ssmoe_cli.models.gating.ptsne import kmeans
from ssmoe_cli.models.gating.spatial import CentreGate, principal_axes, subsample


class InputKMeansGate(CentreGate):
    """Routes each sample to the experts whose k-means centres are nearest to it in input space."""

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        temperature: float | str = "auto",
        temperature_margin: float = 1.0,
        fit_samples: int | None = 10000,
    ) -> None:
        if fit_samples is not None and fit_samples < num_experts:
            raise ValueError(f"fit_samples={fit_samples}: k-means needs at least num_experts={num_experts} points")
        # Until prepare() places them every centre is 0: all logits tie and the first k experts
        # get every sample.
        super().__init__(num_experts, k, torch.zeros(num_experts, in_features), temperature, temperature_margin)
        self.fit_samples = fit_samples

    @property
    def positions(self) -> Tensor:
        """(E, 2) the centres on their two leading principal axes (see the module docstring)."""
        mean, axes = principal_axes(self.centres.detach(), 2)
        return (self.centres.detach() - mean) @ axes.T

    @torch.no_grad()
    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """k-means on at most fit_samples random training points; temperature from the centres."""
        x = subsample(x_train, self.fit_samples, generator).to(self.centres)
        self.set_centres(kmeans(x, self.num_experts, generator), x)

    def forward(self, x: Tensor) -> GateOutput:
        weights, indices, values = self.route(x)
        return GateOutput(weights, indices, values, {}, None)

    def active_macs(self) -> int:
        """x.c_e for every centre: one multiply-add per nonzero centre coordinate (E x D)."""
        return self.centre_macs()

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature_mode}, fit_samples={self.fit_samples}"
