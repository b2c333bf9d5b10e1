"""Routing diagnostics of a trained model on held-out data (part of the metrics contract).

Any model: one that is not routed (routing_of(model) is None) has none, so callers need no switch.
The gate sees the test set in batches of EVAL_BATCH (256), the batch of `time/infer_ms_b256`: a gate
whose choice depends on the batch (expert choice) is measured as it serves such batches.

Routed: a sample is routed to expert e when e is among its active experts (gate value > 0) in
eval mode. Over the test set:
- experts/load_cv2, experts/load_max_over_mean: of each expert's share of the (sample, expert)
  assignments (CV^2 = population variance / mean^2, as Shazeer et al.); experts/max_vio = max / mean
  - 1 of the same shares (MaxVio, the load violation the MoE libraries log).
- experts/dead: experts no test sample is routed to.
- experts/util_min, experts/util_max: the smallest and largest fraction of test samples routed to
  one expert (k of them per sample: the fractions sum to the mean k); experts/importance_cv2: CV^2
  of each expert's share of the gate mass (Shazeer's importance). The per-expert table
  (`expert_utilisation.csv`) has each expert's samples, assignment share and gate-mass share.
- experts/class_mi: mutual information (nats) between a test sample's class and the expert its
  gate mass goes to, p(c, e) = p(c) * mean gate value of e over class c: 0 when every class is
  spread alike, at most min(log classes, log experts). Its table is the per-class routing
  (`routing_by_class.csv`: rows classes, columns experts, each row the class's gate mass, sum 1).
- experts/dropped_pairs, experts/dropped_samples: with a capacity limit (the model's
  `Routing.drop_counts`), the fraction of (sample, expert) pairs dropped, and of samples that lost
  every pair, over the test set in batches of 256; 0 for a model without a capacity limit.
- experts/output_corr: mean pairwise Pearson correlation of the experts' outputs (logits) on the
  same 1,000 test inputs, every expert run on every one (the statistic of runs before issue 14).
- experts/output_corr_routed: the same correlation on the inputs the experts are actually routed:
  for each pair of experts, the Pearson correlation of their logits over the test samples (of a
  2,000 subsample) routed to both; the mean over pairs sharing at least MIN_SHARED samples,
  weighted by how many they share (the correlation of the experts one sample's output mixes).
  NaN when no pair shares that many (k = 1: no sample mixes two experts).
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

EVAL_BATCH = 256  # test batches the gate (and a capacity limit) sees
MIN_SHARED = 10  # a pair of experts enters output_corr_routed with at least this many shared samples


@dataclass
class GateView:
    """What the plots and their tables need: per-expert use, per-class routing, the map if any."""

    load: torch.Tensor  # (E,) share of the test set's (sample, expert) assignments
    embedding: torch.Tensor | None = None  # (N, 2) test subsample
    labels: torch.Tensor | None = None
    centres: torch.Tensor | None = None
    sources: torch.Tensor | None = None  # (E, D) in-links
    samples: torch.Tensor | None = None  # (E,) fraction of test samples routed to each expert
    mass: torch.Tensor | None = None  # (E,) share of the test set's gate mass
    by_class: torch.Tensor | None = None  # (C, E) each class's gate mass over the experts (rows sum to 1)
    class_counts: torch.Tensor | None = None  # (C,) test samples per class


@dataclass(frozen=True)
class Utilisation:
    """Per-expert use of a set of samples, from their (N, E) gate weights."""

    samples: torch.Tensor  # (E,) fraction of the samples routed to each expert
    assignments: torch.Tensor  # (E,) share of all (sample, expert) assignments (sum 1)
    mass: torch.Tensor  # (E,) share of the total gate mass (sum 1)

    @property
    def dead(self) -> int:
        """Experts no sample is routed to."""
        return int((self.samples == 0).sum())

    @property
    def max_vio(self) -> float:
        """MaxVio: the busiest expert's assignments over the mean, minus 1 (0 = perfectly even)."""
        return float(self.assignments.max() / self.assignments.mean() - 1)


def utilisation(weights: torch.Tensor) -> Utilisation:
    """Per-expert use from (N, E) eval-mode gate weights (0 outside each sample's active experts)."""
    w = weights.double()
    active = w > 0
    count = active.sum(0).double()
    # No assignment at all (an empty set): every share 0 rather than 0/0.
    assignments = count / count.sum().clamp_min(1)
    mass = w.sum(0) / w.sum().clamp_min(1e-12)
    return Utilisation(count / max(len(w), 1), assignments, mass)


def class_routing(weights: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((C, E) each class's gate mass over the experts, rows summing to 1 (0 for an absent class),
    (C,) samples per class)."""
    w = weights.double()
    mass = torch.zeros(num_classes, w.shape[1], dtype=torch.float64, device=w.device).index_add_(0, labels, w)
    counts = torch.bincount(labels, minlength=num_classes)
    return mass / mass.sum(1, keepdim=True).clamp_min(1e-12), counts


def class_expert_mi(by_class: torch.Tensor, class_counts: torch.Tensor) -> float:
    """I(class; expert) in nats of p(c, e) = p(c) * by_class[c, e] (class_routing's table)."""
    p_c = class_counts.double() / class_counts.sum().clamp_min(1)
    joint = p_c.unsqueeze(1) * by_class.double()
    p_e = joint.sum(0, keepdim=True)
    ratio = joint / (p_c.unsqueeze(1) * p_e).clamp_min(1e-300)
    return float(torch.where(joint > 0, joint * ratio.clamp_min(1e-300).log(), joint.new_zeros(())).sum())


def routed_output_corr(outputs: torch.Tensor, active: torch.Tensor, min_shared: int = MIN_SHARED) -> float:
    """Mean over expert pairs of the Pearson correlation of their outputs on the samples routed to
    both, weighted by the number of such samples; pairs sharing fewer than min_shared are left out.

    outputs: (E, N, C) each expert's outputs on the N samples; active: (N, E) bool routing.
    """
    n_exp = outputs.shape[0]
    total = weight = 0.0
    for i in range(n_exp):
        for j in range(i + 1, n_exp):
            shared = active[:, i] & active[:, j]
            n = int(shared.sum())
            if n < min_shared:
                continue
            r = torch.corrcoef(torch.stack([outputs[i, shared].flatten(), outputs[j, shared].flatten()]).double())
            if torch.isfinite(r[0, 1]):  # a constant output has no correlation
                total += n * float(r[0, 1])
                weight += n
    return total / weight if weight else float("nan")


def dropped(routing: Routing, x: torch.Tensor, batch: int = EVAL_BATCH) -> tuple[float, float]:
    """(fraction of (sample, expert) pairs dropped, fraction of samples that lost every pair) when x
    passes in batches of `batch`; (0, 0) for a model without a capacity limit (no drop_counts)."""
    counts = routing.drop_counts
    if counts is None or len(x) == 0:
        return 0.0, 0.0
    pairs = lost_pairs = lost_samples = 0
    for xb in x.split(batch):
        p, d, s = counts(xb)
        pairs, lost_pairs, lost_samples = pairs + int(p), lost_pairs + int(d), lost_samples + int(s)
    return lost_pairs / max(pairs, 1), lost_samples / len(x)


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

    weights = routing.gate_weights(x_test, chunk=EVAL_BATCH)
    use = utilisation(weights)
    load = use.assignments
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(1).mean()
    num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1 if len(y_test) else 0
    by_class, class_counts = class_routing(weights, y_test.long(), num_classes)
    drop_pairs, drop_samples = dropped(routing, x_test)
    metrics = {
        names.LOAD_CV2: float(cv_squared(load)),
        names.LOAD_MAX_OVER_MEAN: float(load.max() / load.mean()),
        names.MAX_VIO: use.max_vio,
        names.DEAD_EXPERTS: float(use.dead),
        names.UTIL_MIN: float(use.samples.min()),
        names.UTIL_MAX: float(use.samples.max()),
        names.IMPORTANCE_CV2: float(cv_squared(use.mass)),
        names.CLASS_MI: class_expert_mi(by_class, class_counts),
        names.DROPPED_PAIRS: drop_pairs,
        names.DROPPED_SAMPLES: drop_samples,
        **expert_output_corrs(routing, x_sub, weights[pick] > 0),
        names.GATE_ENTROPY: float(entropy),
    }
    view = GateView(
        load=load.float().cpu(),
        samples=use.samples.float().cpu(),
        mass=use.mass.float().cpu(),
        by_class=by_class.float().cpu(),
        class_counts=class_counts.cpu(),
    )

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
def expert_output_corrs(routing: Routing, x: torch.Tensor, active: torch.Tensor) -> dict[str, float]:
    """experts/output_corr (every expert on the first 1,000 of x, mean off-diagonal Pearson
    correlation) and experts/output_corr_routed (routed_output_corr with `active` (N, E), the
    routing of x), from one batched pass of every expert over x (cheaper than gathering)."""
    n_exp = routing.num_experts
    if n_exp < 2 or len(x) < 2:
        return {names.OUTPUT_CORR: float("nan"), names.OUTPUT_CORR_ROUTED: float("nan")}
    outputs = routing.run_experts(x.unsqueeze(0).expand(n_exp, -1, -1))  # (E, N, C)
    corr = torch.corrcoef(outputs[:, :1000].reshape(n_exp, -1).double())
    off = ~torch.eye(n_exp, dtype=torch.bool, device=corr.device)
    return {
        names.OUTPUT_CORR: float(corr[off].nanmean()),
        names.OUTPUT_CORR_ROUTED: routed_output_corr(outputs, active),
    }
