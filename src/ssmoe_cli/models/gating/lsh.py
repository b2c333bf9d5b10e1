"""LSH gate: hash routing for continuous inputs (a routing control), never trained.

Hash layers (Roller et al. 2021) send each token to a fixed expert chosen by a hash, with no
learned router. The analogue for continuous inputs is a locality-sensitive hash: E random unit
directions r_e (Gaussian, normalised; drawn once from ``seed``) and the centred input decide

    logits_e = (x - mean) . r_e,   indices = the k largest,   gate values 1/k each

so nearby inputs tend to share experts (routing is local), but nothing about the experts or the
task shaped the assignment. It asks whether any learned or fitted routing is needed.

Gate values are uniform, 1/k, not a softmax over the kept logits: (1) a hash layer has no gate
weights (with k = 1 this is Roller et al.'s layer exactly); (2) the projections are in the input's
units with no fitted scale, so how sharp a softmax over them would be is an accident of the data's
scale and dimension, a weighting nobody chose (measured on standardised Fashion-MNIST, 8 experts,
k = 2, 3 seeds: the two kept logits differ by 0.4 at the median, so it would give about 0.6 / 0.4;
inputs on a 10x larger scale would make it nearly one-hot); (3) weighting the k experts by
closeness stays an ingredient the other controls (pca_map, input_kmeans) keep, so the ablation can
tell the two apart. The mean is the training inputs' (``prepare``); the generator is not used.

The directions and the mean are stored folded, as buffers ``projection`` (E, D) and ``offset`` (E,)
= -projection @ mean: no Parameter, so no optimizer or pruning method can change them, and they
travel with the state dict and the exported model file.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmoe_cli.models.accounting import nonzero_params
from ssmoe_cli.models.gating.base import Gate, GateOutput


class LSHGate(Gate):
    """Routes each sample to the k random directions its centred input projects on most, equally."""

    def __init__(self, in_features: int, num_experts: int, k: int, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.k, self.seed = num_experts, k, seed
        directions = torch.randn(num_experts, in_features, generator=torch.Generator().manual_seed(seed))
        # Unit length: a longer direction would win more samples and unbalance the hash for nothing.
        self.register_buffer("projection", directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.register_buffer("offset", torch.zeros(num_experts))

    @torch.no_grad()
    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """Centre the hash on the training inputs' mean (the generator is not needed)."""
        mean = x_train.to(self.projection).mean(0)
        self.offset.copy_(-(self.projection @ mean))

    def logits(self, x: Tensor) -> Tensor:
        """(x - mean) . r_e for every expert: (B, E)."""
        return x @ self.projection.T + self.offset

    def forward(self, x: Tensor) -> GateOutput:
        indices = torch.topk(self.logits(x), self.k, dim=1, sorted=True).indices
        values = torch.full(indices.shape, 1.0 / self.k, dtype=x.dtype, device=x.device)
        weights = torch.zeros(len(x), self.num_experts, dtype=x.dtype, device=x.device).scatter(1, indices, values)
        return GateOutput(weights, indices, values, {}, None)

    def active_params(self) -> int:
        """The nonzero projection and offset floats every sample's pass reads."""
        return nonzero_params(self)

    def active_macs(self) -> int:
        """One multiply-add per nonzero projection coordinate (E x D)."""
        return int(torch.count_nonzero(self.projection))

    def extra_repr(self) -> str:
        return f"k={self.k}, seed={self.seed}"
