"""The t-SNE gate's whole-set objective: a kNN graph of P, edges sampled per step, batch negatives.

The batch objective (tsne.FixedBatches) computes P among the points of one fixed batch only, so a
point's "neighbours" are whichever points share its batch: with 1,000-point batches of 55,000
Fashion-MNIST images a point never sees its real 90 nearest neighbours. Here P comes from each
training point's nearest neighbours over the WHOLE training set, as Barnes-Hut / openTSNE build it:

- ``nearest_neighbours``: exact kNN in torch, in chunks of queries (optionally on a PCA projection,
  ``pca``: on 55,000 784-D images 55 s instead of 119 s with 2 threads, the top-k then dominating);
- ``calibrate_rows`` (tsne.py): perplexity-calibrated conditional p_{j|i} over the k = 3 *
  perplexity neighbours, each row summing to 1;
- ``symmetrise``: P = (P_cond + P_cond^T) / (2n), a sparse edge list (i, j, P_ij), both directions.

The map is trained by the InfoNCE form of t-SNE ("InfoNC-t-SNE", Damrich, Boehm, Hamprecht & Kobak,
ICLR 2023, "From t-SNE to UMAP with contrastive learning"): every step draws b edges with
probability P_ij (``NeighbourGraph.sample``), embeds their 2b end points and, for each end point,
takes the cross-entropy of picking its partner among the other 2b - 1 points of the step under the
Student-t kernel (``infonce_loss``). Damrich et al. show this loss approaches t-SNE's as the
number of negatives grows (here 2b - 2, e.g. 1,022 at b = 512) and, unlike a KL with Z estimated
from the batch, each step's loss is well defined (no log of a noisy estimate of Z); their
parametric version (the contrastive-ne library) also draws its negatives from the batch. Edges are
sampled in proportion to P, so the attraction of an edge is weighted by P_ij as in t-SNE's gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmoe_cli.models.gating.tsne import calibrate_rows


def pca(x: Tensor, dim: int) -> Tensor:
    """x projected on its first ``dim`` principal axes (covariance eigenvectors, in float64)."""
    if dim >= x.shape[1]:
        return x
    xc = x.double() - x.double().mean(0, keepdim=True)
    # eigh of the (D, D) covariance: deterministic, and cheap next to the kNN search for D = 784.
    _, vecs = torch.linalg.eigh(xc.T @ xc)
    return (xc @ vecs[:, -dim:].flip(1)).to(x.dtype)


def nearest_neighbours(x: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of every row of x among the others: (squared distances, indices),
    each (n, k), nearest first. Queries go in chunks so memory stays chunk x n."""
    n = x.shape[0]
    k = min(k, n - 1)
    x = x - x.mean(0, keepdim=True)  # smaller |x|^2 next to the distances: less cancellation
    sq = (x * x).sum(1)
    dists, index = [], []
    for start in range(0, n, chunk):
        q = x[start : start + chunk]
        # |x_j|^2 - 2 q.x_j in one fused addmm: the query's own |q|^2 is the same along a row, so
        # it cannot change the order and is added to the k kept values only (a third less work).
        d = torch.addmm(sq[None, :], q, x.T, alpha=-2.0)
        # A point is never its own neighbour, even where duplicates tie with it at distance 0.
        rows = torch.arange(len(q), device=x.device)
        d[rows, start + rows] = math.inf
        dk, ik = torch.topk(d, k, dim=1, largest=False)
        dists.append((dk + sq[start : start + chunk, None]).clamp_min_(0.0))
        index.append(ik)
    return torch.cat(dists), torch.cat(index)


def symmetrise(p_cond: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Joint P = (P_cond + P_cond^T) / (2n) of row-stochastic neighbour weights p_cond (n, k) over
    columns ``index`` (n, k), as an edge list (heads, tails, P): both directions of every pair,
    no self-edges, P summing to 1, sorted by (head, tail)."""
    n, k = p_cond.shape
    heads = torch.arange(n, device=index.device).repeat_interleave(k)
    tails = index.reshape(-1)
    values = p_cond.reshape(-1).double()
    # Edge (i, j) as the key i * n + j; unique (sorted) keys, with p_{j|i} + p_{i|j} summed where
    # both directions were found (index_add_ on CPU adds in a fixed order: deterministic).
    keys, inverse = torch.unique(torch.cat([heads * n + tails, tails * n + heads]), return_inverse=True)
    p = torch.zeros(len(keys), dtype=torch.float64, device=keys.device)
    p.index_add_(0, inverse, torch.cat([values, values]))
    return keys // n, keys % n, p / (2.0 * n)


class NeighbourGraph:
    """The joint P of a whole training set over kNN edges, and a sampler of edges proportional to P."""

    def __init__(
        self, x: Tensor, perplexity: float = 30.0, neighbors: int | None = None, pca_dim: int | None = 50
    ) -> None:
        k = round(3 * perplexity) if neighbors is None else neighbors
        with torch.no_grad():
            z = pca(x.detach(), pca_dim) if pca_dim is not None else x.detach()
            d, index = nearest_neighbours(z, k)
            p_cond = calibrate_rows(d, perplexity)
            heads, tails, p = symmetrise(p_cond, index)
        # int32 indices: 55,000 points x 90 neighbours give ~7M directed edges (a quarter of the
        # memory of int64 for the pair of them, plus the cumulative sum used to sample).
        self.heads, self.tails, self.p = heads.int(), tails.int(), p.float()
        self.cumulative = torch.cumsum(p, 0)
        self.num_points = len(x)

    def __len__(self) -> int:
        return len(self.p)

    def sample(self, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """b edges (heads, tails) drawn with replacement, edge e with probability P_e."""
        u = torch.rand(b, generator=generator, dtype=torch.float64) * self.cumulative[-1]
        e = torch.searchsorted(self.cumulative, u, right=True).clamp_max_(len(self) - 1)
        return self.heads[e].long(), self.tails[e].long()


def infonce_loss(y_heads: Tensor, y_tails: Tensor, dof: float = 1.0, exaggeration: float = 1.0) -> Tensor:
    """InfoNC-t-SNE on a step of b sampled edges: mean over the 2b end points of
    -log w(partner) + (1 / exaggeration) log sum_{l != self} w(l), w = Student-t kernel
    (1 + d^2 / dof)^(-(dof + 1) / 2) of map distances among the step's 2b points.

    exaggeration > 1 weakens the repulsion, as early exaggeration strengthens t-SNE's attraction
    (Damrich et al.'s spectrum parameter; 1 = t-SNE).
    """
    b = y_heads.shape[0]
    y = torch.cat([y_heads, y_tails])
    y = y - y.mean(0, keepdim=True)
    sq = (y * y).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (y @ y.T)).clamp_min(0.0)
    log_w = torch.log1p(d2 / dof) * (-(dof + 1.0) / 2.0)
    log_w.diagonal().fill_(-math.inf)  # a point is not its own candidate (in place: no (2b)^2 mask)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(y.device)
    if exaggeration == 1.0:
        return F.cross_entropy(log_w, partner)
    attraction = log_w.gather(1, partner[:, None]).squeeze(1)
    return (torch.logsumexp(log_w, 1) / exaggeration - attraction).mean()
