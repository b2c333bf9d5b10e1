"""t-SNE affinities and loss: hand-computed values and the known bugs of public ports."""

from __future__ import annotations

import math

import pytest
import torch

from ssmoe_cli.models.gating.tsne import (
    FixedBatches,
    compute_p,
    conditional_p,
    joint_p,
    kl_divergence,
    q_matrix,
    squared_distances,
    tsne_loss,
)
from ssmoe_cli.models.layers import mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def perplexities(p: torch.Tensor) -> torch.Tensor:
    """2 ** H(P_i) with H in bits, per row."""
    p = p.double()
    return 2.0 ** (-(torch.xlogy(p, p) / math.log(2.0)).sum(1))


def clusters(n_per: int, n_clusters: int, dim: int, spread: float = 10.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_clusters, dim, generator=g) * spread
    x = means.repeat_interleave(n_per, 0) + torch.randn(n_per * n_clusters, dim, generator=g)
    return x, torch.arange(n_clusters).repeat_interleave(n_per)


@pytest.mark.parametrize("neighbors", [None, 24])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_conditional_p_reaches_target_perplexity(neighbors: int | None, scale: float) -> None:
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(0)) * scale
    p = conditional_p(x, perplexity=8.0, neighbors=neighbors)
    assert torch.allclose(p.sum(1), torch.ones(80), atol=1e-5)
    assert torch.all(p.diagonal() == 0)
    # tol 1e-5 nats on H -> relative error ~1e-5 on the perplexity 2**H
    assert torch.allclose(perplexities(p), torch.full((80,), 8.0, dtype=torch.float64), rtol=1e-4)
    if neighbors is not None:
        assert int((p[0] > 0).sum()) <= neighbors


def test_joint_p_symmetric_normalised_zero_diagonal() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    p = compute_p(x, perplexity=10.0)
    assert torch.allclose(p, p.T)
    assert abs(float(p.sum()) - 1.0) < 1e-5
    assert torch.all(p.diagonal() == 0)
    off = ~torch.eye(50, dtype=torch.bool)
    assert torch.all(p[off] > 0)  # clamped at eps, so log P is finite everywhere off the diagonal


def test_joint_p_is_joint_not_column_normalised() -> None:
    pc = torch.tensor([[0.0, 0.9, 0.1], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]])
    p = joint_p(pc)
    # By hand: P_01 = (0.9 + 0.5) / 6, P_02 = (0.1 + 0.2) / 6, P_12 = (0.5 + 0.8) / 6.
    expected = torch.tensor([[0.0, 1.4, 0.3], [1.4, 0.0, 1.3], [0.3, 1.3, 0.0]]) / 6.0
    assert torch.allclose(p, expected, atol=1e-7)
    column_normalised = (pc + pc.T) / (pc + pc.T).sum(0, keepdim=True)
    assert not torch.allclose(p, column_normalised, atol=1e-3)


def test_duplicates_and_far_points_give_finite_p() -> None:
    x = torch.zeros(12, 3)
    x[4:8] = 1.0  # duplicates
    x[8:11] = torch.tensor([2.0, 0.0, 0.0])
    x[11] = 1e6  # a point absurdly far from all others
    for neighbors in (None, 5):
        pc = conditional_p(x, perplexity=3.0, neighbors=neighbors)
        assert torch.isfinite(pc).all()
        assert torch.allclose(pc.sum(1), torch.ones(12), atol=1e-5)  # no all-zero rows
        p = joint_p(pc)
        assert torch.isfinite(p).all() and abs(float(p.sum()) - 1.0) < 1e-5
    # A batch of identical points: only the uniform P exists, whatever the perplexity.
    same = conditional_p(torch.ones(6, 2), perplexity=2.0)
    assert torch.isfinite(same).all()
    assert torch.allclose(same, (1 - torch.eye(6)) / 5)


def test_perplexity_above_batch_size_is_clamped() -> None:
    p = conditional_p(torch.randn(5, 2), perplexity=30.0)
    # The most a row of 4 other points can reach is perplexity 4 (uniform P).
    assert torch.allclose(perplexities(p), torch.full((5,), 4.0, dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(p, (1 - torch.eye(5)) / 4, atol=1e-2)


def test_q_by_hand_excludes_self_terms() -> None:
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # d^2: 01 = 1, 02 = 4, 12 = 5 -> (1 + d^2)^-1 = 1/2, 1/5, 1/6; the normaliser counts every
    # ordered pair i != j: Z = 2 (1/2 + 1/5 + 1/6) = 52/30 (a self-term would add 3 x 1).
    q = q_matrix(y, dof=1.0)
    expected = torch.tensor([[0.0, 15.0, 6.0], [15.0, 0.0, 5.0], [6.0, 5.0, 0.0]]) / 52.0
    assert torch.allclose(q, expected, atol=1e-7)
    # dof a = 2: (1 + d^2/2)^(-3/2)
    num = [1.5**-1.5, 3.0**-1.5, 3.5**-1.5]
    z = 2 * sum(num)
    q2 = q_matrix(y, dof=2.0)
    assert math.isclose(float(q2[0, 1]), num[0] / z, rel_tol=1e-6)
    assert math.isclose(float(q2[1, 2]), num[2] / z, rel_tol=1e-6)


@pytest.mark.parametrize("exaggeration", [1.0, 4.0])
def test_kl_matches_definition(exaggeration: float) -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 5, generator=g), torch.randn(30, 2, generator=g) * 3
    p = compute_p(x, perplexity=5.0)
    q = q_matrix(y)
    off = ~torch.eye(30, dtype=torch.bool)
    ap = exaggeration * p[off]
    expected = (ap * torch.log(ap / q[off])).sum()
    assert torch.allclose(kl_divergence(p, y, exaggeration=exaggeration), expected, atol=1e-5)
    p_log_p = float(torch.xlogy(p, p).sum())
    assert torch.allclose(kl_divergence(p, y, exaggeration=exaggeration, p_log_p=p_log_p), expected, atol=1e-5)
    assert torch.allclose(tsne_loss(x, y, perplexity=5.0), kl_divergence(p, y), atol=1e-6)


def test_kl_finite_for_huge_maps() -> None:
    p = compute_p(torch.randn(20, 3), perplexity=5.0)
    y = (torch.randn(20, 2) * 1e6).requires_grad_()
    loss = kl_divergence(p, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(y.grad).all()


def test_squared_distances_exact_zero_diagonal_and_nonnegative() -> None:
    x = torch.randn(10, 3) * 1e4
    d = squared_distances(x)
    assert torch.all(d.diagonal() == 0) and torch.all(d >= 0)
    assert torch.allclose(d, torch.cdist(x.double(), x.double()).float() ** 2, rtol=1e-3, atol=1e2)


def test_kl_decreases_when_optimising_a_parametric_map() -> None:
    torch.manual_seed(0)
    x, _ = clusters(30, 3, 10)
    p = compute_p(x, perplexity=10.0)
    net = mlp([10, 16, 2])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = kl_divergence(p, net(x)).item()
    for _ in range(150):
        loss = kl_divergence(p, net(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_fixed_batches_keep_p_attached_to_their_points() -> None:
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    fb = FixedBatches(x, batch_size=30, generator=g, perplexity=5.0)
    # 100 = 30 + 30 + 40: the 10-point remainder is merged into the last batch.
    assert sorted(len(i) for i in fb.indices) == [30, 30, 40]
    assert torch.equal(torch.sort(torch.cat(fb.indices)).values, torch.arange(100))
    orders, contents = [], []
    for _ in range(4):
        epoch = list(fb.epoch(g))
        orders.append([int(idx[0]) for idx, _, _ in epoch])
        contents.append(sorted(tuple(idx.tolist()) for idx, _, _ in epoch))
        for idx, p, p_log_p in epoch:
            # The P that comes with a batch is the P of exactly those points, in that order.
            assert torch.allclose(p, compute_p(x[idx], perplexity=5.0))
            assert math.isclose(p_log_p, float(torch.xlogy(p, p).sum()), rel_tol=1e-6)
    assert all(c == contents[0] for c in contents)  # batch contents never change...
    assert len({tuple(o) for o in orders}) > 1  # ...only their order does
