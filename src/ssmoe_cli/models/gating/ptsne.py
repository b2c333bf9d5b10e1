"""Parametric t-SNE gate: experts live at points of a 2-D map learned by parametric t-SNE.

A small ReLU network f: R^D -> R^2 is trained on the t-SNE loss (van der Maaten 2009) so that
neighbours in input space stay neighbours in the map. Each expert e sits at a centre c_e of that
map, and a sample is routed to the experts nearest to f(x), as the distance-based (RBF) gates of
Xu, Jordan & Hinton (1994):

    logits_e = -||f(x) - c_e||^2 / temperature,   G(x) = softmax(KeepTopK(logits, k))

Schedules:
- "pretrain": f trains on t-SNE alone in ``prepare`` for ``pretrain_epochs``; then ``freeze``
  fixes it, or leaves it to be fine-tuned by the classification loss.
- "joint": after the optional pretraining, every training-mode forward also returns
  aux["tsne_kl"] = tsne_weight * KL on the next fixed t-SNE batch, so the map keeps its
  neighbourhoods while classification trains it.
Pretraining runs early_exaggeration for exaggeration_epochs, then ``exaggeration`` (also the joint
loss's), as openTSNE's two phases; pretrain_lr_schedule "cosine" decays Adam's lr to 0.

Objectives:
- "batch": P among the points of fixed batches (tsne.FixedBatches), loss KL(P || Q) per batch;
- "knn_graph": P over each point's nearest neighbours in the whole training set, edges sampled in
  proportion to P, InfoNCE with the step's other points as negatives (knn_graph.py).

Centres: "grid" (regular grid over the map's extent), "kmeans" (k-means++ on the embedded
training data), "learned" (k-means init, then trained by the classification loss) or "random"
(the map positions of distinct training points drawn at random: the "does placement matter?"
control, placed where the data are, like kmeans, but without optimising the placement). Grid,
kmeans and random centres, and the "auto" temperature, are set once, after pretraining; with an
unfrozen f only "learned" centres follow the map as it moves.

In "joint" mode the fixed t-SNE batches and their P (about 4 B^2 bytes per batch), or the kNN graph
(about 16 bytes per edge), stay in memory, not in the state dict: a gate restored from a
checkpoint routes as before, but needs ``prepare`` again to train in "joint" mode. The "pretrain"
schedule drops them after pretraining.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssmoe_cli.models.accounting import nonzero_macs, nonzero_params
from ssmoe_cli.models.gating.base import Gate, GateOutput, topk_softmax
from ssmoe_cli.models.gating.knn_graph import NeighbourGraph, infonce_loss
from ssmoe_cli.models.gating.tsne import FixedBatches, kl_divergence, tsne_loss
from ssmoe_cli.models.layers import mlp, set_role


def kmeans(y: Tensor, k: int, generator: torch.Generator, iters: int = 100) -> Tensor:
    """k-means (Lloyd) with k-means++ seeding drawn from ``generator``; returns (k, dim) centres."""
    n = y.shape[0]
    centres = y[torch.randint(n, (1,), generator=generator, device="cpu").to(y.device)]
    d2 = ((y - centres) ** 2).sum(1)
    for _ in range(1, k):
        # k-means++: the next seed is drawn with probability proportional to D(y)^2.
        w = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        i = torch.multinomial(w.cpu(), 1, generator=generator).to(y.device)
        centres = torch.cat([centres, y[i]])
        d2 = torch.minimum(d2, ((y - y[i]) ** 2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(y, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).to(y.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, y)
        # An empty cluster keeps its old centre rather than collapsing to 0/0.
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        if torch.allclose(new, centres):
            break
        centres = new
    return centres


def grid(y: Tensor, k: int) -> Tensor:
    """k points of a regular grid over the extent of y (1st-99th percentile: t-SNE maps have a
    few far outliers), with as many columns as the extent's aspect ratio suggests."""
    lo, hi = torch.quantile(y, 0.01, dim=0), torch.quantile(y, 0.99, dim=0)
    width, height = (hi - lo).clamp_min(1e-12).tolist()
    cols = min(k, max(1, round(math.sqrt(k * width / height))))
    rows = math.ceil(k / cols)
    cells = [(c, r) for r in range(rows) for c in range(cols)][:k]
    frac = torch.tensor([[(c + 0.5) / cols, (r + 0.5) / rows] for c, r in cells], dtype=y.dtype)
    return lo + frac.to(y.device) * (hi - lo)


def auto_temperature(centres: Tensor, y: Tensor, margin: float = 4.0) -> float:
    """A temperature in the map's own units: (median nearest-centre distance)^2 / margin.

    A sample sitting on a centre then leads the nearest other centre by ``margin`` in logits
    (gate ~0.98 vs 0.02 for two experts): routing is confident near centres and soft between
    them, and the softmax never saturates to exactly 0/1 in float32, so learned centres and f
    keep getting gradients. A within-cluster spread (RBF sigma^2) would be far sharper on
    well-separated t-SNE clusters and kill those gradients. One expert: mean squared distance.
    """
    if len(centres) > 1:
        dc = torch.cdist(centres, centres)
        dc.fill_diagonal_(math.inf)
        t = float(dc.min(1).values.median()) ** 2 / margin
    else:
        t = float(((y - centres) ** 2).sum(1).mean())
    return max(t, 1e-12)


def cosine_lr(lr: float, step: int, total_steps: int) -> float:
    """The lr of step ``step`` (0-based) of ``total_steps``: half a cosine from lr down to 0 (the
    last step's lr is small but not 0, so no step is wasted)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))


class PTSNEGate(Gate):
    """Routes each sample to the experts whose centres are nearest to it in a parametric t-SNE map."""

    def __init__(
        self,
        in_features: int,
        num_experts: int,
        k: int,
        hidden: Sequence[int] = (16,),
        centres: str = "kmeans",
        temperature: float | str = "auto",
        temperature_margin: float = 1.0,
        schedule: str = "pretrain",
        freeze: bool = True,
        pretrain_epochs: int = 20,
        pretrain_lr: float = 1e-2,
        tsne_batch_size: int = 1000,
        perplexity: float = 30.0,
        neighbors: int | str | None = "auto",
        dof: float = 1.0,
        early_exaggeration: float = 1.0,
        exaggeration_epochs: int = 0,
        exaggeration: float = 1.0,
        pretrain_lr_schedule: str = "constant",
        tsne_weight: float = 0.1,
        tsne_samples: int | None = None,
        objective: str = "batch",
        knn_pca: int | None = 50,
    ) -> None:
        super().__init__()
        if centres not in ("grid", "kmeans", "learned", "random"):
            raise ValueError(f"centres={centres!r}: choose grid, kmeans, learned or random")
        if objective not in ("batch", "knn_graph"):
            raise ValueError(f"objective={objective!r}: choose batch or knn_graph")
        if knn_pca is not None and knn_pca < 1:
            raise ValueError(f"knn_pca={knn_pca}: a positive number of PCA dimensions, or null for none")
        if exaggeration <= 0 or early_exaggeration <= 0:
            raise ValueError(
                f"early_exaggeration={early_exaggeration}, exaggeration={exaggeration}: both must be > 0 (1 = none)"
            )
        if pretrain_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"pretrain_lr_schedule={pretrain_lr_schedule!r}: choose constant or cosine")
        if schedule not in ("pretrain", "joint"):
            raise ValueError(f"schedule={schedule!r}: choose pretrain or joint")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        if temperature != "auto" and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature={temperature!r}: 'auto' or a positive number")
        self.num_experts, self.k = num_experts, k
        self.centres_mode, self.schedule, self.freeze = centres, schedule, freeze
        self.temperature_mode = temperature
        if temperature_margin <= 0:
            raise ValueError(f"temperature_margin={temperature_margin}: must be > 0")
        self.temperature_margin = temperature_margin
        self.pretrain_epochs, self.pretrain_lr = pretrain_epochs, pretrain_lr
        self.tsne_batch_size, self.perplexity, self.dof = tsne_batch_size, perplexity, dof
        # BH-SNE's choice: P of each point over its 3 * perplexity nearest neighbours only.
        self.neighbors = round(3 * perplexity) if neighbors == "auto" else neighbors
        self.early_exaggeration, self.exaggeration_epochs = early_exaggeration, exaggeration_epochs
        self.exaggeration, self.pretrain_lr_schedule = exaggeration, pretrain_lr_schedule
        self.tsne_weight, self.tsne_samples = tsne_weight, tsne_samples
        self.objective, self.knn_pca = objective, knn_pca

        # role "gate": pruning selects the gate's layers apart from the experts' (mlp() would call
        # the last layer "output", the classifier's).
        self.net = set_role(mlp([in_features, *hidden, 2]), "gate")
        # Until prepare() places them, centres sit on a unit grid so an unprepared gate still routes.
        init = grid(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), num_experts)
        if centres == "learned":
            self.centres = nn.Parameter(init)
        else:
            self.register_buffer("centres", init)
        self.register_buffer("temperature", torch.tensor(1.0 if temperature == "auto" else float(temperature)))
        self._batches: FixedBatches | None = None
        self._graph: NeighbourGraph | None = None
        self._x_tsne: Tensor | None = None
        self._order: list[int] = []  # joint schedule: batch numbers still to visit in this pass
        self._generator: torch.Generator | None = None

    @property
    def positions(self) -> Tensor:
        """(E, 2) expert places in the map: the centres."""
        return self.centres.detach()

    # -- preparation --------------------------------------------------------------------------
    def prepare(self, x_train: Tensor, generator: torch.Generator) -> None:
        """Fixed t-SNE batches, pretraining of f, then centres and temperature from the embedding."""
        device = self.centres.device
        self.net.requires_grad_(True)  # (a second prepare after a freeze)
        # A private generator: the joint schedule keeps drawing batch orders from it in training.
        seed = int(torch.randint(2**62, (1,), generator=generator))
        self._generator = torch.Generator().manual_seed(seed)
        x = x_train.detach()
        if self.tsne_samples is not None and self.tsne_samples < len(x):
            x = x[torch.randperm(len(x), generator=self._generator)[: self.tsne_samples]]
        self._x_tsne, self._order = x.to(device), []
        if self.objective == "batch":
            self._batches = FixedBatches(
                self._x_tsne, self.tsne_batch_size, self._generator, self.perplexity, self.neighbors
            )
        else:
            self._graph = NeighbourGraph(self._x_tsne, self.perplexity, self.neighbors, self.knn_pca)
        self.pretrain(self.pretrain_epochs)

        y = self.embed(x_train.to(device))
        self.place_centres(y, self._generator)
        if self.schedule == "pretrain":
            # P (~B^2 floats per batch, or the graph's edges) is only needed again by the joint schedule.
            self._batches, self._graph, self._x_tsne, self._order = None, None, None, []
            if self.freeze:
                self.net.requires_grad_(False)

    def pretrain(self, epochs: int) -> list[float]:
        """Adam on the t-SNE objective; returns the mean loss of each epoch. An epoch is one pass
        over the fixed batches ("batch"), or as many steps of tsne_batch_size sampled edges
        ("knn_graph"): each point then takes part in about two edges per epoch. The first
        exaggeration_epochs use early_exaggeration, the rest ``exaggeration`` (openTSNE's two
        phases); a "cosine" schedule takes the lr from pretrain_lr to 0 over all the steps."""
        if (self._batches is None and self._graph is None) or self._x_tsne is None or self._generator is None:
            raise RuntimeError("pretrain() needs the fixed batches or the kNN graph of prepare()")
        opt = torch.optim.Adam(self.net.parameters(), lr=self.pretrain_lr)
        was_training = self.training
        self.train()
        history = []
        steps = len(self._batches) if self._batches is not None else math.ceil(len(self._x_tsne) / self.tsne_batch_size)
        step, total_steps = 0, max(epochs * steps, 1)
        for epoch in range(epochs):
            alpha = self.early_exaggeration if epoch < self.exaggeration_epochs else self.exaggeration
            losses = (
                (
                    kl_divergence(p, self.net(self._x_tsne[idx]), self.dof, alpha, p_log_p)
                    for idx, p, p_log_p in self._batches.epoch(self._generator)
                )
                if self._batches is not None
                else (self._graph_loss(alpha) for _ in range(steps))
            )
            total, count = 0.0, 0
            for loss in losses:
                if self.pretrain_lr_schedule == "cosine":
                    opt.param_groups[0]["lr"] = cosine_lr(self.pretrain_lr, step, total_steps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count, step = total + loss.item(), count + 1, step + 1
            history.append(total / max(count, 1))
        self.train(was_training)
        return history

    def _graph_loss(self, exaggeration: float = 1.0) -> Tensor:
        """InfoNC-t-SNE on tsne_batch_size edges of the kNN graph drawn in proportion to P."""
        assert self._graph is not None and self._x_tsne is not None and self._generator is not None
        heads, tails = self._graph.sample(self.tsne_batch_size, self._generator)
        # The model may have moved to another device since prepare(); the data did not.
        y = self.net(self._x_tsne[torch.cat([heads, tails])].to(self.centres.device))
        return infonce_loss(y[: len(heads)], y[len(heads) :], self.dof, exaggeration)

    @torch.no_grad()
    def embed(self, x: Tensor, chunk: int = 8192) -> Tensor:
        """f(x) for many points, in chunks, without gradient."""
        return torch.cat([self.net(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    @torch.no_grad()
    def place_centres(self, y: Tensor, generator: torch.Generator) -> None:
        """Centres from the embedded training data; the "auto" temperature from their spacing."""
        if self.centres_mode == "grid":
            c = grid(y, self.num_experts)
        elif self.centres_mode == "random":
            c = y[torch.randperm(len(y), generator=generator)[: self.num_experts].to(y.device)]
        else:
            c = kmeans(y, self.num_experts, generator)
        self.centres.copy_(c)
        if self.temperature_mode == "auto":
            self.temperature.fill_(auto_temperature(c, y, self.temperature_margin))

    @torch.no_grad()
    def diagnostics(self, x: Tensor) -> dict[str, float]:
        """tsne_kl: KL(P || Q) of the map on the first t-SNE batch's worth of held-out points."""
        n = min(len(x), self.tsne_batch_size)
        # The whole of x through f first, then the slice: the same numbers as the map plots show.
        return {"tsne_kl": float(tsne_loss(x[:n], self.embed(x)[:n], self.perplexity, self.dof))}

    # -- routing ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> GateOutput:
        y = self.net(x)
        d2 = ((y[:, None, :] - self.centres[None, :, :]) ** 2).sum(-1)
        weights, indices, values = topk_softmax(-d2 / self.temperature, self.k)
        aux: dict[str, Tensor] = {}
        if self.training and self.schedule == "joint" and self.tsne_weight > 0:
            # The key stays "tsne_kl" for both objectives (logged under that name); with knn_graph
            # it carries the weighted InfoNCE loss.
            if self._batches is not None:
                aux["tsne_kl"] = self.tsne_weight * self._joint_kl()
            elif self._graph is not None:
                aux["tsne_kl"] = self.tsne_weight * self._graph_loss(self.exaggeration)
        return GateOutput(weights, indices, values, aux, y)

    def _joint_kl(self) -> Tensor:
        """KL on the next fixed batch; a new random ORDER of the same batches every pass."""
        assert self._batches is not None and self._x_tsne is not None
        if not self._order:
            self._order = self._batches.order(self._generator)
        idx, p, p_log_p = self._batches[self._order.pop()]
        # The model may have moved to another device since prepare(); P and the data did not.
        device = self.centres.device
        y = self.net(self._x_tsne[idx].to(device))
        return kl_divergence(p.to(device), y, self.dof, self.exaggeration, p_log_p)

    # -- accounting ---------------------------------------------------------------------------
    def active_params(self) -> int:
        """The whole gate, as params/nonzero counts it: every sample's pass reads f's nonzero
        weights and biases, the E x 2 centres it compares with and the temperature that scales the
        distances (float buffers inference reads count like parameters, models/accounting.py)."""
        return nonzero_params(self)

    def active_macs(self) -> int:
        """f's nonzero weights plus 2 multiply-adds per centre (one per coordinate) for the squared
        distances; the division by the temperature belongs with the softmax (not counted)."""
        return nonzero_macs(self.net) + 2 * self.num_experts

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, objective={self.objective}, centres={self.centres_mode}, schedule={self.schedule}, "
            f"freeze={self.freeze}, "
            f"temperature={self.temperature_mode}"
        )
