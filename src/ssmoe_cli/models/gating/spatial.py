"""Routing by distance to expert centres: what the routing controls (issue 14) share.

Expert e sits at a centre c_e of some space of coordinates y(x), and a sample goes to the experts
whose centres are nearest, with the rule of the t-SNE gate (ptsne.py):

    logits_e = -||y(x) - c_e||^2 / temperature,   G(x) = softmax(KeepTopK(logits, k))

`CentreGate` holds the centres and the temperature and routes; a subclass says what y is (a 2-D
PCA map in pca_map.py, the input itself in input_kmeans.py) and places the centres in `prepare`
with ptsne's own k-means++ / grid and "auto" temperature. `principal_axes` and `subsample` are
the fitting helpers both controls use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmoe_cli.models.accounting import nonzero_params
from ssmoe_cli.models.gating.base import Gate, topk_softmax
from ssmoe_cli.models.gating.ptsne import auto_temperature


def subsample(x: Tensor, n: int | None, generator: torch.Generator) -> Tensor:
    """At most n rows of x drawn without replacement from ``generator`` (all of x when n is None
    or not smaller than len(x): nothing is drawn then)."""
    if n is None or n >= len(x):
        return x
    return x[torch.randperm(len(x), generator=generator)[:n].to(x.device)]


@torch.no_grad()
def principal_axes(x: Tensor, n: int = 2) -> tuple[Tensor, Tensor]:
    """Mean (D,) and the n leading principal axes (n, D) of the rows of x, orthonormal, by
    decreasing variance. Each axis's largest-magnitude coordinate is made positive (scikit-learn's
    svd_flip convention), so the result is fixed, not up to sign. Axes beyond the data's dimension
    are zero rows.

    Computed in float64: from the D x D covariance (eigh) when x has more rows than columns (the
    training set: one pass, no N x D decomposition), else from the SVD of the centred rows (a few
    centres in a high-dimensional space).
    """
    x64 = x.double()
    mean = x64.mean(0)
    xc = x64 - mean
    if len(x) > x.shape[1]:
        axes = torch.linalg.eigh(xc.T @ xc).eigenvectors.flip(1).T[:n]  # eigh: ascending eigenvalues
    else:
        axes = torch.linalg.svd(xc, full_matrices=False).Vh[:n]
    if len(axes) < n:
        axes = torch.cat([axes, axes.new_zeros(n - len(axes), x.shape[1])])
    sign = axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    axes = axes * torch.where(sign == 0, 1.0, sign)
    return mean.to(x.dtype), axes.to(x.dtype)


class CentreGate(Gate):
    """Base of the gates that route to the k nearest of E centres (buffers ``centres`` (E, dim)
    and ``temperature``). Abstract: a subclass implements `forward` (with `route`), `active_macs`
    (with `centre_macs`) and places the centres in `prepare` (with `set_centres`)."""

    def __init__(
        self, num_experts: int, k: int, init: Tensor, temperature: float | str, temperature_margin: float
    ) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        if temperature != "auto" and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature={temperature!r}: 'auto' or a positive number")
        if temperature_margin <= 0:
            raise ValueError(f"temperature_margin={temperature_margin}: must be > 0")
        self.num_experts, self.k = num_experts, k
        self.temperature_mode, self.temperature_margin = temperature, temperature_margin
        self.register_buffer("centres", init.clone())
        self.register_buffer("temperature", torch.tensor(1.0 if temperature == "auto" else float(temperature)))

    @torch.no_grad()
    def set_centres(self, centres: Tensor, y: Tensor) -> None:
        """Install the centres; with temperature "auto", ptsne's: (median distance between
        neighbouring centres)^2 / temperature_margin (y, the placed points, serves one expert)."""
        self.centres.copy_(centres)
        if self.temperature_mode == "auto":
            self.temperature.fill_(auto_temperature(self.centres, y, self.temperature_margin))

    def route(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k softmax of -||y - c_e||^2 / temperature: (weights (B, E), indices (B, k), values (B, k)).

        Computed as (2 y.c_e - ||c_e||^2) / temperature: that differs from the logits above by
        ||y||^2 / temperature, the same for every expert of a sample, which neither the top k nor
        the softmax sees. One matmul, dim multiply-adds per centre, instead of a (B, E, dim)
        difference tensor (in the input space that tensor is B x E x 784 floats).
        """
        scores = 2.0 * y @ self.centres.T - (self.centres**2).sum(1)
        return topk_softmax(scores / self.temperature, self.k)

    def centre_macs(self) -> int:
        """Multiply-adds of the dot products y.c_e per sample: one per nonzero centre coordinate
        (||c_e||^2 is a constant of the model, computed once, like a bias)."""
        return int(torch.count_nonzero(self.centres))

    def active_params(self) -> int:
        """The whole gate, as params/nonzero counts it: every sample's pass reads its nonzero weights,
        the centres it compares with and the temperature (float buffers count like parameters)."""
        return nonzero_params(self)
