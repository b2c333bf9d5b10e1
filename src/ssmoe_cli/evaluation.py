"""Metrics of a trained mixture of experts on held-out data (added to the metrics contract).

- experts/load_cv2, experts/load_max_over_mean: of the fraction of (sample, expert) assignments each
  expert receives on the test set (CV^2 = population variance / mean^2, as Shazeer et al.).
- experts/output_corr: mean pairwise Pearson correlation of the experts' outputs on the same inputs
  (every expert run on one shared test subsample).
- gate/entropy: mean entropy (nats) of the gate's weights per test sample.
- gate/tsne_kl, gate/trustworthiness, gate/knn1_acc (gates with a 2-D map only): KL(P||Q) of a
  held-out batch, trustworthiness T(12) of the embedding of a held-out subsample vs its inputs, and
  1-NN accuracy of test points against the embedded training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssmoe_cli.models.moe import MixtureOfExperts


def cv_squared(x: torch.Tensor) -> float:
    x = x.double()
    mean = x.mean()
    return float(x.var(unbiased=False) / (mean**2)) if mean > 0 else 0.0


@dataclass
class GateView:
    """What the plots need: loads per expert, and the map when the gate has one."""

    load: torch.Tensor  # (E,) fraction of assignments
    embedding: torch.Tensor | None = None  # (N, 2) test subsample
    labels: torch.Tensor | None = None
    centres: torch.Tensor | None = None
    sources: torch.Tensor | None = None  # (E, D) in-links


@torch.no_grad()
def moe_metrics(
    model: MixtureOfExperts,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    subsample: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, float], GateView]:
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x_test), generator=gen)[: min(subsample, len(x_test))].to(x_test.device)
    x_sub, y_sub = x_test[pick], y_test[pick]

    weights = torch.cat([model.gate(xb).weights for xb in x_test.split(4096)])
    active = weights > 0
    load = active.sum(0).double() / active.sum()
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(1).mean()
    metrics = {
        "experts/load_cv2": cv_squared(load),
        "experts/load_max_over_mean": float(load.max() / load.mean()),
        "experts/output_corr": expert_output_corr(model, x_sub[:1000]),
        "gate/entropy": float(entropy),
    }
    view = GateView(load=load.float().cpu())

    embed = getattr(model.gate, "embed", None)
    if callable(embed):
        from sklearn.manifold import trustworthiness
        from sklearn.neighbors import KNeighborsClassifier

        from ssmoe_cli.models.gating.tsne import tsne_loss

        emb_sub = embed(x_sub)
        n_kl = min(len(x_sub), getattr(model.gate, "tsne_batch_size", 1000))
        metrics["gate/tsne_kl"] = float(
            tsne_loss(x_sub[:n_kl], emb_sub[:n_kl], model.gate.perplexity, getattr(model.gate, "dof", 1.0))
        )
        metrics["gate/trustworthiness"] = float(
            trustworthiness(x_sub.cpu().numpy(), emb_sub.cpu().numpy(), n_neighbors=12)
        )
        knn = KNeighborsClassifier(n_neighbors=1).fit(embed(x_train).cpu().numpy(), y_train.cpu().numpy())
        metrics["gate/knn1_acc"] = float(knn.score(embed(x_test).cpu().numpy(), y_test.cpu().numpy()))
        view.embedding, view.labels = emb_sub.cpu(), y_sub.cpu()
        view.centres = model.gate_positions().cpu() if model.gate_positions() is not None else None
        view.sources = model.route_sources.cpu()
    model.train(was_training)
    return metrics, view


@torch.no_grad()
def expert_output_corr(model: MixtureOfExperts, x: torch.Tensor) -> float:
    """Mean off-diagonal Pearson correlation between experts' outputs on the same inputs."""
    n_exp = model.num_experts
    if n_exp < 2 or len(x) < 2:
        return float("nan")
    out = model.experts(x.unsqueeze(0).expand(n_exp, -1, -1)).reshape(n_exp, -1).double()
    corr = torch.corrcoef(out)
    off = ~torch.eye(n_exp, dtype=torch.bool, device=corr.device)
    return float(corr[off].nanmean())
