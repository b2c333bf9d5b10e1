"""Routing diagnostics of a trained model on held-out data (part of the metrics contract).

Any model: one that is not routed (routing_of(model) is None) has none, so callers need no switch.
- experts/load_cv2, experts/load_max_over_mean: of the fraction of (sample, expert) assignments each
  expert receives on the test set (CV^2 = population variance / mean^2, as Shazeer et al.).
- experts/output_corr: mean pairwise Pearson correlation of the experts' outputs on the same inputs
  (every expert run on one shared test subsample).
- gate/entropy: mean entropy (nats) of the gate's weights per test sample.
- gates with a 2-D map only (their `embed` gives one): gate/trustworthiness, trustworthiness
  T(12) of the embedding of a held-out subsample vs its inputs; gate/knn1_acc, 1-NN accuracy of
  test points against the embedded training set; and the gate's own `diagnostics` as gate/<name>
  (the t-SNE gate: gate/tsne_kl, KL(P||Q) of a held-out batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmoe_cli import metrics as names
from ssmoe_cli.models.base import Routing, routing_of
from ssmoe_cli.models.gating.base import cv_squared


@dataclass
class GateView:
    """What the plots need: loads per expert, and the map when the gate has one."""

    load: torch.Tensor  # (E,) fraction of assignments
    embedding: torch.Tensor | None = None  # (N, 2) test subsample
    labels: torch.Tensor | None = None
    centres: torch.Tensor | None = None
    sources: torch.Tensor | None = None  # (E, D) in-links


@torch.no_grad()
def routing_metrics(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    subsample: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, float], GateView | None]:
    """The routing metrics and the plots' view of a routed model; ({}, None) for any other."""
    routing = routing_of(model)
    if routing is None:
        return {}, None
    was_training = model.training
    model.eval()
    try:
        return _routing_metrics(routing, x_train, y_train, x_test, y_test, subsample, seed)
    finally:
        model.train(was_training)


def _routing_metrics(
    routing: Routing,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    subsample: int,
    seed: int,
) -> tuple[dict[str, float], GateView]:
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x_test), generator=gen)[: min(subsample, len(x_test))].to(x_test.device)
    x_sub, y_sub = x_test[pick], y_test[pick]

    weights = routing.gate_weights(x_test)
    active = weights > 0
    load = active.sum(0).double() / active.sum()
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(1).mean()
    metrics = {
        names.LOAD_CV2: float(cv_squared(load)),
        names.LOAD_MAX_OVER_MEAN: float(load.max() / load.mean()),
        names.OUTPUT_CORR: expert_output_corr(routing, x_sub[:1000]),
        names.GATE_ENTROPY: float(entropy),
    }
    view = GateView(load=load.float().cpu())

    gate = routing.gate
    emb_sub = gate.embed(x_sub)
    if emb_sub is not None:
        # sklearn only for gates with a map: it is slow to import.
        from sklearn.manifold import trustworthiness
        from sklearn.neighbors import KNeighborsClassifier

        metrics.update({f"gate/{name}": value for name, value in gate.diagnostics(x_sub).items()})
        metrics[names.GATE_TRUSTWORTHINESS] = float(
            trustworthiness(x_sub.cpu().numpy(), emb_sub.cpu().numpy(), n_neighbors=12)
        )
        knn = KNeighborsClassifier(n_neighbors=1).fit(gate.embed(x_train).cpu().numpy(), y_train.cpu().numpy())
        metrics[names.GATE_KNN1_ACC] = float(knn.score(gate.embed(x_test).cpu().numpy(), y_test.cpu().numpy()))
        view.embedding, view.labels = emb_sub.cpu(), y_sub.cpu()
        view.centres = gate.positions.cpu() if gate.positions is not None else None
        view.sources = routing.in_links.cpu()
    return metrics, view


@torch.no_grad()
def expert_output_corr(routing: Routing, x: torch.Tensor) -> float:
    """Mean off-diagonal Pearson correlation between experts' outputs on the same inputs."""
    n_exp = routing.num_experts
    if n_exp < 2 or len(x) < 2:
        return float("nan")
    out = routing.run_experts(x.unsqueeze(0).expand(n_exp, -1, -1)).reshape(n_exp, -1).double()
    corr = torch.corrcoef(out)
    off = ~torch.eye(n_exp, dtype=torch.bool, device=corr.device)
    return float(corr[off].nanmean())
