"""The `quantize` stage of a training run (config group `quantize`): after training (and pruning),
share weights by k-means, fine-tune the centroids, and hand the exporter what it encodes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ssmoe_cli import metrics as names
from ssmoe_cli.models.base import prunable_layers
from ssmoe_cli.quantize.codec import ENTROPY
from ssmoe_cli.quantize.kmeans import Batch, SharedLayer, finetune_centroids, share_weights

log = logging.getLogger(__name__)


@dataclass
class Quantized:
    """What quantising a model produced: the shared layers by module name, and metrics to log."""

    layers: dict[str, SharedLayer]
    entropy: str
    metrics: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Top-1 accuracy of `model` (eval mode) over the batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in batches:
        correct += int((model(x.to(device)).logits.argmax(1) == y.to(device)).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


class KMeansQuantization:
    """Deep Compression's weight sharing on every inference layer of a model (Han et al. 2016).

    bits: 2^bits shared values per layer (the paper: 5 for fully connected layers); index_bits:
    width of a relative index in the file (a gap of 2^index_bits - 1 or more takes fillers);
    finetune_epochs: passes of centroid fine-tuning (0: none); lr: Adam's step for the centroids;
    iterations: at most this many k-means iterations; entropy: "huffman" codes both streams,
    "none" stores them packed at fixed width."""

    def __init__(
        self,
        bits: int = 5,
        index_bits: int = 5,
        finetune_epochs: int = 1,
        lr: float = 1.0e-4,
        iterations: int = 50,
        entropy: str = "huffman",
    ) -> None:
        def integer(key: str, value: Any, low: int, high: int | None, why: str = "") -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bound = f"in [{low}, {high}]" if high else f">= {low}"
                raise ValueError(f"quantize.{key}={value!r}: must be an integer {bound}{why}")
            return value

        self.bits = integer("bits", bits, 1, 8, " (2^bits shared values per layer; the paper uses 5)")
        self.index_bits = integer("index_bits", index_bits, 1, 8, " (the paper uses 4-5 bits)")
        self.finetune_epochs = integer("finetune_epochs", finetune_epochs, 0, None)
        self.iterations = integer("iterations", iterations, 1, None)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise ValueError(f"quantize.lr={lr!r}: must be a finite number > 0")
        self.lr = float(lr)
        if entropy not in ENTROPY:
            raise ValueError(f"quantize.entropy={entropy!r}: must be one of {', '.join(ENTROPY)}")
        self.entropy = entropy

    def apply(
        self,
        model: nn.Module,
        train_batches: Callable[[], Iterable[Batch]],
        test_batches: Callable[[], Iterable[Batch]] | None = None,
    ) -> Quantized:
        """Quantise `model` in place. With `test_batches`, also measure the test accuracy before
        weight sharing and after it but before fine-tuning (the caller tests the final model)."""
        metrics: dict[str, float] = {}
        if test_batches is not None:
            metrics[names.QUANT_ACC_BEFORE] = accuracy(model, test_batches())
        layers = prunable_layers(model)
        shared = share_weights(layers, self.bits, self.index_bits, self.iterations)
        if test_batches is not None:
            metrics[names.QUANT_ACC_SHARED] = accuracy(model, test_batches())
        steps = finetune_centroids(model, layers, shared, train_batches, self.finetune_epochs, self.lr)
        log.info(
            "quantize: %d layers share 2^%d values each; %d centroid fine-tuning steps", len(shared), self.bits, steps
        )
        return Quantized(shared, self.entropy, metrics)
