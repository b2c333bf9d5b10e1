"""The small interface every model of ssmoe implements, and what pruning methods and metrics may ask
of a model: its prunable layers (with their roles) and, for a routed model, its routing facts.

Nothing outside models/ reads a model's attributes: a sparsity method asks `prunable_layers(model)`
and `routing_of(model)`, the diagnostics ask `routing_of(model)`. Both also accept a plain
nn.Module that is not a `Model` (e.g. a user's network): every masked layer is then prunable and
there is no routing.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from ssmoe_cli.models.gating.base import Gate
from ssmoe_cli.models.layers import Masked
from ssmoe_cli.models.topology.base import ring_positions

if TYPE_CHECKING:
    from ssmoe_cli.models.accounting import Accounting


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    # Auxiliary losses, already multiplied by their coefficients (e.g. load balancing, t-SNE KL).
    # The training loss is cross-entropy + their sum; each is also logged as train/aux/<name>.
    aux: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Routing:
    """What a routed model (a mixture of experts) tells pruning methods and diagnostics.

    gate: the model's gate; in_links: (E, D) source experts each expert reads (-1: none);
    route: the layer of inter-expert route weights, (E, out, R), None without routes;
    route_columns: (E, R) the source expert of each of those R route columns;
    run_experts: (E, N, in) -> (E, N, classes), expert e on row block e (all units of every expert);
    drop_counts: x -> (pairs, dropped_pairs, samples_with_all_pairs_dropped) of x as one eval-mode
    batch (pairs over a fixed expert capacity are dropped); None for a model that never drops.
    """

    gate: Gate
    in_links: Tensor
    route: Masked | None
    route_columns: Tensor
    run_experts: Callable[[Tensor], Tensor]
    drop_counts: Callable[[Tensor], tuple[int, int, int]] | None = None

    @property
    def num_experts(self) -> int:
        return self.gate.num_experts

    def positions(self) -> Tensor:
        """(E, 2) places of the experts: the gate's map, or the ring the topologies use without one."""
        pos = self.gate.positions
        return ring_positions(self.num_experts) if pos is None else pos.detach().float().cpu()

    @torch.no_grad()
    def gate_weights(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """(N, E) eval-mode gate values of x (zero outside each sample's active experts)."""
        was_training = self.gate.training
        self.gate.eval()
        try:
            return torch.cat([self.gate(xb).weights for xb in x.split(chunk)])
        finally:
            self.gate.train(was_training)

    def active_experts(self, x: Tensor, chunk: int = 4096) -> Tensor:
        """(N, E) bool: the experts each sample's eval-mode forward pass uses (nonzero gate value)."""
        return self.gate_weights(x, chunk) > 0


class Model(nn.Module, abc.ABC):
    """Base of ssmoe's models: plain nn.Modules that know nothing of Lightning, Hydra or MLflow.

    A model implements `forward(x) -> ModelOutput` and `accounting(x) -> Accounting` (what one
    sample's pass uses; `dense_accounting(self)` when every sample uses every weight). The rest has
    defaults: `prepare` (nothing to fit before training), `prunable_layers` (every masked layer, by
    qualified name), `routing` (None: not routed) and `vmappable` (the forward as it is).
    """

    @abc.abstractmethod
    def forward(self, x: Tensor) -> ModelOutput:
        """Logits and weighted auxiliary losses of a batch."""

    @abc.abstractmethod
    def accounting(self, x: Tensor | None = None) -> Accounting:
        """Parameters and multiply-adds one sample uses, averaged over x (eval mode)."""

    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """Fit-independent preparation on training inputs before classification training."""

    def prunable_layers(self) -> dict[str, Masked]:
        """The masked layers a sparsity method may prune, by qualified name; each has a `role`.
        Layers only training uses (`train_only`) are not among them: inference never reads them."""
        return {name: m for name, m in self.named_modules() if isinstance(m, Masked) and not m.train_only}

    def routing(self) -> Routing | None:
        """Routing facts of a routed model; None for a model every sample passes through whole."""
        return None

    @contextlib.contextmanager
    def vmappable(self) -> Iterator[None]:
        """A context in which the forward pass can be batched by torch.func.vmap (no data-dependent
        shapes), computing the same function on batches of one sample."""
        yield


def prunable_layers(model: nn.Module) -> dict[str, Masked]:
    """The model's prunable layers by qualified name (any nn.Module: its masked layers)."""
    if isinstance(model, Model):
        return model.prunable_layers()
    return {name: m for name, m in model.named_modules() if isinstance(m, Masked) and not m.train_only}


def routing_of(model: nn.Module) -> Routing | None:
    """The model's routing facts, or None when it is not routed (or not a Model at all)."""
    return model.routing() if isinstance(model, Model) else None


@contextlib.contextmanager
def vmappable(model: nn.Module) -> Iterator[None]:
    """Enter the `vmappable` context of the model and of every Model inside it."""
    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if isinstance(m, Model):
                stack.enter_context(m.vmappable())
        yield
