"""Weight sharing (Deep Compression stage 2, Han et al. 2016): per layer, k-means on the nonzero
weights with centroids initialised linearly over [min, max], every weight replaced by its centroid;
then centroid fine-tuning, where each centroid moves by the sum of the gradients of its weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.models.layers import Masked

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SharedLayer:
    """One weight-shared layer: its nonzero flat positions (sorted), each one's code, the codebook."""

    positions: torch.Tensor  # int64, into weight.reshape(-1)
    codes: torch.Tensor  # int64 in [0, 2^bits)
    codebook: torch.Tensor  # float32 (2^bits,)
    bits: int
    index_bits: int

    def write(self, layer: Masked) -> None:
        """Set the layer's weight (and mask) to the shared values at its positions, zero elsewhere."""
        with torch.no_grad():
            flat = torch.zeros(layer.weight.numel(), dtype=layer.weight.dtype, device=layer.weight.device)
            flat[self.positions] = self.codebook.to(flat.device, flat.dtype)[self.codes]
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[self.positions] = True
            layer.weight.copy_(flat.reshape(layer.weight.shape))
            layer.mask.copy_(mask.reshape(layer.mask.shape))


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means in one dimension with linear initialisation over [min, max] (the paper's best
    choice: it keeps centroids at the rare large weights). Returns (float32 centroids, int64 codes).
    A cluster that loses all its members keeps its centroid (it is simply unused)."""
    x = values.detach().double().reshape(-1).cpu()
    if x.numel() == 0:
        raise ValueError("k-means needs at least one value")
    centroids = torch.linspace(float(x.min()), float(x.max()), clusters, dtype=torch.float64)
    codes = torch.full_like(x, -1, dtype=torch.int64)
    for _ in range(iterations):
        # Centroids stay sorted (means of ordered intervals), so the nearest is found between midpoints.
        new_codes = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
        sums = torch.zeros(clusters, dtype=torch.float64).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=clusters)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    codebook = centroids.float()
    # Codes are final for the float32 codebook: a value halfway between two centroids keeps its cluster.
    return codebook, codes


def share_weights(
    layers: dict[str, Masked], bits: int, index_bits: int, iterations: int = 50
) -> dict[str, SharedLayer]:
    """Quantise each layer with at least one nonzero weight in place: k-means with 2^bits centroids
    on its nonzero (unmasked) weights. Layers with none are left alone (nothing to store)."""
    shared: dict[str, SharedLayer] = {}
    for name, layer in layers.items():
        flat = layer.masked_weight().detach().reshape(-1)
        positions = torch.nonzero(flat).reshape(-1).cpu()
        if positions.numel() == 0:
            continue
        codebook, codes = kmeans_1d(flat.cpu()[positions], 1 << bits, iterations)
        shared[name] = SharedLayer(positions, codes, codebook, bits, index_bits)
        shared[name].write(layer)
    return shared


def classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of ssmoe_cli.module.ClassifierModule: cross-entropy plus the auxiliary losses."""
    out = model(x)
    ce = F.cross_entropy(out.logits, y)
    return ce + sum(out.aux.values()) if out.aux else ce


def finetune_centroids(
    model: nn.Module,
    layers: dict[str, Masked],
    shared: dict[str, SharedLayer],
    batches: Callable[[], Iterable[Batch]],
    epochs: int,
    lr: float,
) -> int:
    """Train only the codebooks for `epochs` passes over `batches()` (Adam, `lr`): each centroid's
    gradient is the sum of the gradients of the weights that share it; codes and masks never change,
    nor does any other parameter. Returns the optimizer steps taken."""
    if epochs == 0 or not shared:
        return 0
    device = next(model.parameters()).device
    centroids = {name: nn.Parameter(s.codebook.to(device).clone()) for name, s in shared.items()}
    positions = {name: s.positions.to(device) for name, s in shared.items()}
    codes = {name: s.codes.to(device) for name, s in shared.items()}
    optimizer = torch.optim.Adam(centroids.values(), lr=lr)
    requires = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    for name in shared:
        layers[name].weight.requires_grad_(True)
    steps = 0
    try:
        model.train()
        for _ in range(epochs):
            for x, y in batches():
                with torch.no_grad():
                    for name, layer in layers.items():
                        if name in shared:
                            layer.weight.view(-1)[positions[name]] = centroids[name][codes[name]]
                model.zero_grad(set_to_none=True)
                loss = classifier_loss(model, x.to(device), y.to(device))
                if not torch.isfinite(loss):
                    raise SsmoeError(
                        f"quantize: the loss became {float(loss)} while fine-tuning centroids; lower quantize.lr"
                    )
                loss.backward()
                for name, centroid in centroids.items():
                    centroid.grad = torch.zeros_like(centroid)
                    weight_grad = layers[name].weight.grad
                    if weight_grad is not None:  # None: the layer took no part in this batch's loss
                        centroid.grad.index_add_(0, codes[name], weight_grad.reshape(-1)[positions[name]])
                optimizer.step()
                steps += 1
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for name, s in shared.items():
        s.codebook = centroids[name].detach().cpu().clone()
        s.write(layers[name])
    return steps
