"""The t-SNE gate's whole-set objective (knn_graph.py) and its random-centres control."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from sklearn.neighbors import KNeighborsClassifier
from test_tsne import clusters
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ssmoe_cli.models.gating.knn_graph import (
    NeighbourGraph,
    infonce_loss,
    nearest_neighbours,
    pca,
    symmetrise,
)
from ssmoe_cli.models.gating.ptsne import PTSNEGate, cosine_lr
from ssmoe_cli.models.gating.tsne import calibrate_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nearest_neighbours_exact_and_never_self() -> None:
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(0))
    x[5] = x[6]  # a duplicate: distance 0 to 6, but 5 is still not its own neighbour
    d, idx = nearest_neighbours(x, 10, chunk=64)  # several chunks, the last a partial one
    full = torch.cdist(x.double(), x.double()) ** 2
    full.fill_diagonal_(math.inf)
    ref_d, ref_idx = torch.topk(full, 10, dim=1, largest=False)
    assert torch.allclose(d.double(), ref_d, atol=1e-4)
    assert not (idx == torch.arange(300)[:, None]).any()
    assert int(idx[5, 0]) == 6 and float(d[5, 0]) < 1e-5
    assert (torch.sort(idx, 1).values == torch.sort(ref_idx, 1).values).float().mean() > 0.99


def test_pca_keeps_the_leading_axes() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 5, generator=g) * torch.tensor([10.0, 5.0, 0.1, 0.1, 0.1])
    z = pca(x, 2)
    assert z.shape == (500, 2)
    # Two axes keep almost all the variance, and the distances with it.
    assert float(z.var(0).sum() / x.var(0).sum()) > 0.999
    assert torch.equal(pca(x, 5), x)  # as many dimensions as the data: unchanged


def test_graph_p_rows_reach_perplexity_then_symmetric_and_normalised() -> None:
    x, _ = clusters(40, 3, 6)
    d, idx = nearest_neighbours(x, 24)
    p_cond = calibrate_rows(d, perplexity=8.0)
    assert torch.allclose(p_cond.sum(1), torch.ones(120, dtype=torch.float64), atol=1e-9)
    entropy = -torch.xlogy(p_cond, p_cond).sum(1)
    assert torch.allclose(entropy.exp(), torch.full((120,), 8.0, dtype=torch.float64), rtol=1e-4)
    heads, tails, p = symmetrise(p_cond, idx)
    assert abs(float(p.sum()) - 1.0) < 1e-9 and bool((heads != tails).all())
    dense = torch.zeros(120, 120, dtype=torch.float64).index_put_((heads, tails), p)
    assert torch.allclose(dense, dense.T)
    cond = torch.zeros(120, 120, dtype=torch.float64).scatter_(1, idx, p_cond)
    assert torch.allclose(dense, (cond + cond.T) / 240)
    graph = NeighbourGraph(x, perplexity=8.0, neighbors=24, pca_dim=None)
    assert torch.equal(graph.heads.long(), heads) and torch.allclose(graph.p.double(), p, atol=1e-7)


def test_symmetrise_by_hand() -> None:
    # 3 points, 1 neighbour each: 0 -> 1, 1 -> 0, 2 -> 1 (weight 1 each).
    heads, tails, p = symmetrise(torch.ones(3, 1), torch.tensor([[1], [0], [1]]))
    edges = {(int(i), int(j)): float(v) for i, j, v in zip(heads, tails, p, strict=True)}
    assert edges == pytest.approx({(0, 1): 2 / 6, (1, 0): 2 / 6, (1, 2): 1 / 6, (2, 1): 1 / 6})


def test_edges_are_drawn_in_proportion_to_p() -> None:
    graph = NeighbourGraph(torch.randn(12, 3, generator=torch.Generator().manual_seed(0)), 2.0, 4, None)
    heads, tails = graph.sample(200_000, torch.Generator().manual_seed(0))
    # Edges are sorted by (head, tail): find each drawn pair's edge number by its key.
    keys = graph.heads.long() * 12 + graph.tails.long()
    drawn = heads * 12 + tails
    e = torch.searchsorted(keys, drawn)
    assert torch.equal(keys[e], drawn)  # every drawn pair is an edge of the graph
    counts = torch.bincount(e, minlength=len(graph)).double()
    expected = graph.p.double() * 200_000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(graph) - 1
    # Pearson's chi-square with dof degrees of freedom: mean dof, sd sqrt(2 dof); 5 sd is far
    # beyond chance, and a sampler off by a few percent on one edge lands far above it.
    assert chi2 < dof + 5 * math.sqrt(2 * dof)
    again = graph.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], heads[:1000]) and torch.equal(again[1], tails[:1000])


def test_infonce_by_hand() -> None:
    # One edge (0, 1) and nothing else: each end point has only its partner, loss = 0.
    y = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(infonce_loss(y[:1], y[1:])) == pytest.approx(0.0, abs=1e-7)
    # Two edges (a, b), (c, d): point a's candidates are b, c, d with w = 1 / (1 + d^2).
    a, b, c, d = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([3.0, 0.0])
    pts = [a, c, b, d]  # order in the loss: heads (a, c), then tails (b, d)
    w = [[1 / (1 + float(((p - q) ** 2).sum())) for q in pts] for p in pts]
    partner = [2, 3, 0, 1]
    expected = sum(-math.log(w[i][partner[i]] / (sum(w[i]) - w[i][i])) for i in range(4)) / 4
    loss = infonce_loss(torch.stack([a, c]), torch.stack([b, d]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Exaggeration alpha divides the repulsive log-sum (over every candidate, the partner too).
    exaggerated = sum(-math.log(w[i][partner[i]]) + math.log(sum(w[i]) - w[i][i]) / 4 for i in range(4)) / 4
    loss4 = infonce_loss(torch.stack([a, c]), torch.stack([b, d]), exaggeration=4.0)
    assert float(loss4) == pytest.approx(exaggerated, rel=1e-6)


def test_graph_loss_decreases_and_separates_clusters() -> None:
    torch.manual_seed(0)
    x, labels = clusters(60, 3, 10)
    # The joint schedule keeps the graph after prepare(), so pretrain() can be called again.
    gate = PTSNEGate(
        10,
        3,
        1,
        hidden=(16,),
        pretrain_epochs=0,
        tsne_batch_size=60,
        perplexity=10.0,
        objective="knn_graph",
        knn_pca=None,
        schedule="joint",
    )
    gate.prepare(x, torch.Generator().manual_seed(0))
    history = gate.pretrain(40)
    final = sum(history[-5:]) / 5
    assert final < history[0] - 0.2
    # Below the loss of a map that collapses each cluster to a point (an end point's partner is
    # then one of the ~39 other same-cluster points of the step, log 39 = 3.66): the map also
    # keeps neighbourhoods inside the clusters.
    assert final < math.log(39)
    y = gate.embed(x)
    knn = KNeighborsClassifier(n_neighbors=1).fit(y[::2], labels[::2])
    assert knn.score(y[1::2], labels[1::2]) == 1.0


def test_knn_graph_prepare_is_deterministic_and_joint_schedule_trains() -> None:
    x, _ = clusters(30, 3, 8)

    def prepared(**kw) -> PTSNEGate:
        torch.manual_seed(0)
        gate = PTSNEGate(
            8, 3, 2, hidden=(8,), pretrain_epochs=5, tsne_batch_size=30, perplexity=5.0, objective="knn_graph", **kw
        )
        gate.prepare(x, torch.Generator().manual_seed(0))
        return gate

    a, b = prepared(), prepared()
    assert torch.equal(a.embed(x), b.embed(x)) and torch.equal(a.centres, b.centres)
    joint = prepared(schedule="joint", freeze=False, tsne_weight=0.5)
    out = joint.train()(x[:16])
    assert set(out.aux) == {"tsne_kl"} and float(out.aux["tsne_kl"].detach()) > 0
    out.aux["tsne_kl"].backward()
    assert all(p.grad is not None for p in joint.net.parameters())


def test_cosine_lr_by_hand() -> None:
    assert cosine_lr(0.1, 0, 4) == pytest.approx(0.1)
    assert cosine_lr(0.1, 1, 4) == pytest.approx(0.05 * (1 + math.sqrt(0.5)))  # cos(pi / 4)
    assert cosine_lr(0.1, 2, 4) == pytest.approx(0.05)
    assert cosine_lr(0.1, 3, 4) == pytest.approx(0.05 * (1 - math.sqrt(0.5)))


def test_pretrain_exaggeration_phases_and_cosine_lr() -> None:
    """Each step's exaggeration (early for exaggeration_epochs, then ``exaggeration``) and lr."""
    x, _ = clusters(20, 3, 6)  # 60 points, edges of 20 per step: 3 steps per epoch
    gate = PTSNEGate(
        6,
        3,
        1,
        hidden=(4,),
        pretrain_epochs=0,
        pretrain_lr=0.1,
        tsne_batch_size=20,
        perplexity=5.0,
        objective="knn_graph",
        knn_pca=None,
        schedule="joint",
        early_exaggeration=12.0,
        exaggeration_epochs=1,
        exaggeration=3.0,
        pretrain_lr_schedule="cosine",
    )
    gate.prepare(x, torch.Generator().manual_seed(0))
    alphas, lrs = [], []
    graph_loss = gate._graph_loss
    gate._graph_loss = lambda alpha: alphas.append(alpha) or graph_loss(alpha)  # type: ignore[method-assign]
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        gate.pretrain(2)
    finally:
        hook.remove()
    assert alphas == [12.0] * 3 + [3.0] * 3
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])


def test_random_centres_are_distinct_training_points_inside_the_map() -> None:
    torch.manual_seed(0)
    x, _ = clusters(30, 4, 8)
    gate = PTSNEGate(8, 6, 1, hidden=(8,), pretrain_epochs=3, tsne_batch_size=40, perplexity=5.0, centres="random")
    gate.prepare(x, torch.Generator().manual_seed(0))
    y = gate.embed(x)
    lo, hi = y.min(0).values, y.max(0).values
    assert bool(((gate.centres >= lo) & (gate.centres <= hi)).all())
    hits = torch.cdist(gate.centres, y).min(1).values
    assert float(hits.max()) < 1e-5  # each centre is a training point's map position...
    assert len({tuple(c) for c in gate.centres.tolist()}) == 6  # ...and no two the same
    torch.manual_seed(0)
    other = PTSNEGate(8, 6, 1, hidden=(8,), pretrain_epochs=3, tsne_batch_size=40, perplexity=5.0, centres="random")
    other.prepare(x, torch.Generator().manual_seed(0))
    assert torch.equal(other.centres, gate.centres)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="objective"):
        PTSNEGate(4, 2, 1, objective="global")
    with pytest.raises(ValueError, match="knn_pca"):
        PTSNEGate(4, 2, 1, knn_pca=0)
    with pytest.raises(ValueError, match="random"):
        PTSNEGate(4, 2, 1, centres="shuffled")
    with pytest.raises(ValueError, match="exaggeration"):
        PTSNEGate(4, 2, 1, exaggeration=0.0)
    with pytest.raises(ValueError, match="pretrain_lr_schedule"):
        PTSNEGate(4, 2, 1, pretrain_lr_schedule="linear")


def test_ptsne_random_config_reuses_ptsne() -> None:
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        base = compose("train", overrides=["model=ptsne_moe", "hydra.runtime.output_dir=/tmp"])
        rand = compose("train", overrides=["model=ptsne_moe", "gating=ptsne_random", "hydra.runtime.output_dir=/tmp"])
    assert rand.gating.centres == "random" and base.gating.centres == "kmeans"
    assert {k: v for k, v in rand.gating.items() if k != "centres"} == {
        k: v for k, v in base.gating.items() if k != "centres"
    }


def test_ptsne_knn_configs_compose() -> None:
    """gating=ptsne_knn is the knn_graph map on top of ptsne; ptsne_knn_random differs only in centres."""
    out = ["model=ptsne_moe", "hydra.runtime.output_dir=/tmp"]
    with initialize_config_module("ssmoe_cli.conf", version_base="1.3"):
        base = compose("train", overrides=out)
        knn = compose("train", overrides=[*out, "gating=ptsne_knn"])
        rand = compose("train", overrides=[*out, "gating=ptsne_knn_random"])
    assert knn.gating.objective == "knn_graph" and base.gating.objective == "batch"
    assert knn.gating._target_ == base.gating._target_ and knn.gating.num_experts == base.gating.num_experts
    assert rand.gating.centres == "random" and knn.gating.centres == "kmeans"
    assert {k: v for k, v in rand.gating.items() if k != "centres"} == {
        k: v for k, v in knn.gating.items() if k != "centres"
    }


def test_cli_trains_with_knn_graph_objective(run_cli, tmp_path) -> None:
    from conftest import FAST, search_runs

    run_cli(
        "train",
        "model=ptsne_moe",
        "gating.objective=knn_graph",
        "gating.pretrain_epochs=2",
        "data=digits",
        "threads=1",
        *FAST,
    )
    runs = search_runs(tmp_path)
    assert len(runs) == 1
    assert runs.iloc[0]["params.gating.objective"] == "knn_graph"
