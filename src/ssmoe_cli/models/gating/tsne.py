"""t-SNE affinities and loss as pure, vectorised tensor functions (van der Maaten 2009, 2014).

- ``calibrate_rows``: per-row Gaussian weights over given squared distances whose per-point
  precision beta_i is found by bisection (all rows at once) so that H(P_i) = log2(perplexity);
  ``conditional_p`` applies it to a batch (dense), knn_graph.py to a whole-set kNN graph (sparse).
- ``joint_p``: P = (P_cond + P_cond^T) / (2B), normalised over the whole matrix, clamped at eps
  off the diagonal, zero on it.
- ``log_q``: Student-t affinities with ``dof`` degrees of freedom, self-terms excluded from the
  normaliser.
- ``kl_divergence`` / ``tsne_loss``: KL(P || Q).
- ``FixedBatches``: the data cut ONCE into fixed batches with P precomputed per batch. Only the
  order of batches changes between epochs; reshuffling points after computing P (a bug of several
  public ports) silently pairs every P with the wrong points.

The bisection runs in float64: its tolerance (1e-5 nats) is close to float32's resolution on sums
of thousands of terms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

EPS = 1e-12


def squared_distances(x: Tensor) -> Tensor:
    """(B, B) squared Euclidean distances, exactly 0 on the diagonal and never negative."""
    # Centring first keeps |x|^2 small next to the distances (less cancellation in float32).
    x = x - x.mean(0, keepdim=True)
    sq = (x * x).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0.0)
    d.fill_diagonal_(0.0)
    return d


def calibrate_rows(d: Tensor, perplexity: float = 30.0, tol: float = 1e-5, max_iter: int = 100) -> Tensor:
    """Row-stochastic p (n, m) from squared distances d (n, m): p_ij ~ exp(-beta_i d_ij), with beta_i
    found by bisection (all rows at once) so that each row's entropy is log(perplexity) nats.

    An entry +inf is excluded (p = 0). A perplexity above what a row can reach (its number of
    finite entries) is clamped to that maximum. Computed in float64 (the tolerance is close to
    float32's resolution on sums of many terms).
    """
    d_inf = d.double()
    n = d_inf.shape[0]
    finite = torch.isfinite(d_inf)
    m = int(finite.sum(1).min()) if n else 0  # points every row can spread its mass over
    # Subtracting each row's smallest distance leaves P unchanged (it cancels in the normaliser)
    # and keeps the largest term at exp(0) = 1: no all-zero rows, no 0/0, whatever the scale.
    d_inf = d_inf - d_inf.min(dim=1, keepdim=True).values
    d = d_inf.masked_fill(~finite, 0.0)  # 0 here, for the sum of p * d; +inf stays in d_inf
    target = math.log(max(min(perplexity, m), 1))

    def entropy_and_p(beta: Tensor, rows: Tensor | slice) -> tuple[Tensor, Tensor]:
        logits = -beta * d_inf[rows]
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        p = torch.exp(logits - lse)
        # H = -sum_j p log p = lse + beta * sum_j p d (no 0 * log 0 terms).
        h = lse.squeeze(1) + beta.squeeze(1) * (p * d[rows]).sum(1)
        return h, p

    # Start from a scale-aware precision (1 / mean distance) so far or near data converge alike.
    # (Rows of identical points have mean 0: any beta gives them the same uniform P.)
    mean_d = d.sum(1, keepdim=True) / finite.sum(1, keepdim=True).clamp_min(1)
    beta = torch.where(mean_d > 0, 1.0 / mean_d, torch.ones_like(mean_d))
    lo = torch.zeros_like(beta)
    hi = torch.full_like(beta, math.inf)
    # Bisection on all rows at once; only rows not yet within tol are recomputed (most rows
    # converge long before the slowest one).
    active = torch.arange(n, device=d.device)
    for _ in range(max_iter):
        h, _ = entropy_and_p(beta[active], active)
        diff = (h - target).unsqueeze(1)
        todo = diff.abs().squeeze(1) >= tol
        if not bool(todo.any()):
            break
        active, diff = active[todo], diff[todo]
        b, lo_a, hi_a = beta[active], lo[active], hi[active]
        too_flat = diff > 0  # entropy too high: sharpen (raise beta)
        lo_a = torch.where(too_flat, b, lo_a)
        hi_a = torch.where(too_flat, hi_a, b)
        # Capped so that beta * 0 never becomes inf * 0 = NaN for rows that cannot converge.
        b = torch.where(torch.isinf(hi_a), b * 2.0, (lo_a + hi_a) / 2.0).clamp_max(1e300)
        beta[active], lo[active], hi[active] = b, lo_a, hi_a
    return entropy_and_p(beta, slice(None))[1]


def conditional_p(
    x: Tensor,
    perplexity: float = 30.0,
    tol: float = 1e-5,
    max_iter: int = 100,
    neighbors: int | None = None,
) -> Tensor:
    """Row-stochastic p_{j|i} (B, B) with entropy log(perplexity) nats per row, zero diagonal.

    ``neighbors`` restricts each row to its nearest neighbours (BH-SNE uses 3 * perplexity), all
    other entries are 0; None uses every point of the batch (exact). A perplexity above what a
    row can reach (B - 1 points, or fewer neighbours) is clamped to that maximum.
    """
    n = x.shape[0]
    if n < 2:
        return torch.zeros(n, n, dtype=x.dtype, device=x.device)
    # Distances in the input precision (a float32 matmul; its rounding is far below any
    # neighbour gap that matters), the bisection in float64.
    d = squared_distances(x.detach()).double()
    d.fill_diagonal_(math.inf)  # exp(-beta * inf) = 0 excludes p_{i|i}
    if neighbors is not None and neighbors < n - 1:
        d, cols = torch.topk(d, neighbors, dim=1, largest=False)
    else:
        cols = None
    p = calibrate_rows(d, perplexity, tol, max_iter)
    if cols is not None:
        p = torch.zeros(n, n, dtype=p.dtype, device=p.device).scatter_(1, cols, p)
    return p.to(x.dtype)


def joint_p(p_cond: Tensor, eps: float = EPS) -> Tensor:
    """Symmetric joint P = (P_cond + P_cond^T) / (2B): sums to 1, zero diagonal, >= eps elsewhere."""
    n = p_cond.shape[0]
    p = (p_cond + p_cond.T) / (2.0 * n)
    p = p.clamp_min(eps)
    p.fill_diagonal_(0.0)
    return p


def compute_p(
    x: Tensor, perplexity: float = 30.0, neighbors: int | None = None, tol: float = 1e-5, max_iter: int = 100
) -> Tensor:
    """Joint P of a batch (no gradient: P is a fixed target)."""
    with torch.no_grad():
        return joint_p(conditional_p(x, perplexity, tol=tol, max_iter=max_iter, neighbors=neighbors))


def log_q(y: Tensor, dof: float = 1.0) -> Tensor:
    """log Q_ij for Student-t affinities (1 + d^2/a)^(-(a+1)/2); diagonal -inf (Q_ii = 0).

    The self-terms are excluded from the normaliser; computed in log space (log1p + logsumexp) so
    that huge map distances underflow gracefully.
    """
    n = y.shape[0]
    log_num = -(dof + 1.0) / 2.0 * torch.log1p(squared_distances(y) / dof)
    diag = torch.eye(n, dtype=torch.bool, device=y.device)
    log_num = log_num.masked_fill(diag, -math.inf)
    return log_num - torch.logsumexp(log_num.flatten(), dim=0)


def q_matrix(y: Tensor, dof: float = 1.0) -> Tensor:
    """Q (B, B): Student-t affinities normalised over the whole batch, zero diagonal."""
    return torch.exp(log_q(y, dof))


def kl_divergence(
    p: Tensor, y: Tensor, dof: float = 1.0, exaggeration: float = 1.0, p_log_p: Tensor | float | None = None
) -> Tensor:
    """KL(alpha P || Q) = sum_{i != j} alpha P_ij log(alpha P_ij / Q_ij), alpha = exaggeration.

    With alpha > 1 (early exaggeration) the attractive forces are alpha times stronger, as in
    the original implementation. ``p_log_p`` = sum P log P (a constant of fixed P) may be given to
    skip recomputing it: it shifts the loss, not its gradient.

    Written for speed on (B, B) matrices: log Q_ij = -(a+1)/2 log(1 + d_ij^2/a) - log Z, so
    sum alpha P log Q = -(a+1)/2 sum alpha P log1p(d^2/a) - alpha log Z (P has a zero diagonal),
    and log Z is a logsumexp with the self-terms set to -inf.
    """
    p = p.to(y.dtype)
    log1p_d = torch.log1p(squared_distances(y) / dof)
    log_num = log1p_d * (-(dof + 1.0) / 2.0)
    log_num.diagonal().fill_(-math.inf)  # exclude the self-terms from Z
    log_z = torch.logsumexp(log_num.flatten(), dim=0)
    mass = p.sum()
    cross = -(dof + 1.0) / 2.0 * (p * log1p_d).sum() - mass * log_z  # sum P log Q
    if p_log_p is None:
        p_log_p = torch.xlogy(p, p).sum()
    # sum aP log(aP) = a (sum P log P + log a sum P)
    return exaggeration * (p_log_p + math.log(exaggeration) * mass - cross)


def tsne_loss(x: Tensor, y: Tensor, perplexity: float = 30.0, dof: float = 1.0, exaggeration: float = 1.0) -> Tensor:
    """KL(P(x) || Q(y)) for one batch of inputs x and their map points y."""
    return kl_divergence(compute_p(x, perplexity), y, dof, exaggeration)


class FixedBatches:
    """Data shuffled ONCE into fixed batches, each with its precomputed joint P.

    ``epoch(generator)`` yields (indices, P, sum P log P) in a new random order of batches; the content
    of every batch, and the P that belongs to it, never change. The last partial batch is merged
    into the previous one so no batch is too small to have neighbours.
    """

    def __init__(
        self,
        x: Tensor,
        batch_size: int,
        generator: torch.Generator,
        perplexity: float = 30.0,
        neighbors: int | None = None,
    ) -> None:
        n = x.shape[0]
        perm = torch.randperm(n, generator=generator)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < batch_size // 2:
            starts.pop()
        bounds = [*starts, n]
        self.indices: list[Tensor] = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.p: list[Tensor] = [compute_p(x[idx], perplexity, neighbors) for idx in self.indices]
        # sum P log P per batch: a constant of the KL, computed once rather than every step.
        self.p_log_p: list[float] = [float(torch.xlogy(p, p).sum()) for p in self.p]

    def __len__(self) -> int:
        return len(self.indices)

    def order(self, generator: torch.Generator) -> list[int]:
        """A new random order of the batch numbers (never of the points inside a batch)."""
        return torch.randperm(len(self), generator=generator).tolist()

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor, float]:
        """(indices, P, sum P log P) of batch b."""
        return self.indices[b], self.p[b], self.p_log_p[b]

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor, float]]:
        """Every batch once, in a new random order."""
        for b in self.order(generator):
            yield self[b]
