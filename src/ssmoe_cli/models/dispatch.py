"""Dispatch of a mixture of experts: which (sample, expert) pairs run, and how they are batched.

Expert weights are stacked (ExpertLinear: one (E, out, in) tensor per layer) so the dispatch paths
run each layer as one batched matmul:
- `dense`: every expert on every sample, weighted by the gate (zeros outside the top k): wasted
  FLOPs, but no indexing; wins when E/k is small.
- `capacity`: only routed samples go to each expert: each (sample, expert) pair gets a slot in a
  per-expert buffer of `capacity` rows (gather), the experts run on the buffers (bmm), outputs are
  scaled by the gate and summed back per sample. No Python loop over experts and no data-dependent
  shapes beyond the capacity, so compute follows k, not E. capacity_factor=null sizes the buffer to
  the busiest expert of the batch (exact; one host read of a count, free on CPU); a number fixes it
  to ceil(factor * B * k / E) (pairs over capacity are dropped; see "Drops" below).
- `pairs`: each (sample, expert) pair runs with that expert's weights gathered for it: only the
  selected experts' matrices are read, so small batches (B * k < E, e.g. batch 1) cost the same
  whatever E is; large batches would copy B * k weight matrices.
- `grouped`: pairs sorted by expert; each expert with pairs runs once on its contiguous rows with a
  view of its weights (no padding, no weight copies); one Python step per active expert.
- `sorted`: pairs sorted by expert as in `grouped`, every layer one grouped matmul over the sorted
  rows (F.grouped_mm with per-expert offsets): no padding to the busiest expert and no Python step
  per expert. Layer 0 runs fused with the route units (as in the full passes).

Drops (capacity path with a fixed capacity_factor only): a sample that loses some of its pairs
combines its kept experts with their gate values renormalised to its original total gate mass; a
sample that loses all of them runs its top-1 expert in an overflow pass (the pairs path) with that
whole mass (1 for every gate of ssmoe, whose values sum to 1). `drop_counts(x)` (also
`Routing.drop_counts`) counts pairs, dropped pairs and samples rescued so, for one eval batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DISPATCH_MODES = ("auto", "dense", "capacity", "pairs", "grouped", "sorted")
# auto runs `sorted` from this many rows per expert on average (B * k / E) when it runs either.
SORTED_MIN_ROWS = 16


def grouped_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, offs: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """x (P, in), its rows sorted by expert (expert e's end at offs[e]), through w (E, out, in) and b
    (E, out): (P, out). F.grouped_mm wants 16-byte strides, so in and out are padded with zeros to
    multiples of 4 where they are not (a copy of w; layers of ssmoe's defaults need none but the
    output layer, 10 classes)."""
    out_f, in_f = w.shape[1], w.shape[2]
    pad_in, pad_out = -in_f % 4, -out_f % 4
    if pad_in:
        x = F.pad(x, (0, pad_in))
    if pad_in or pad_out:
        w = F.pad(w, (0, pad_in, 0, pad_out))
    y = F.grouped_mm(x, w.transpose(1, 2), offs=offs)
    if pad_out:
        y = y[:, :out_f]
    return y + b[rows] if b is not None else y


class Dispatch:
    """The dispatch paths of MixtureOfExperts (a mixin: it reads the mixture's `num_experts`,
    `layers`, `route`, `route_units`, `gate`, `dispatch`, `dense_max_ratio`, `capacity_factor`,
    `experts()` and `_dropout()`). Every path computes the same function as `combine_dense`, the
    reference (tests/test_dispatch_paths.py)."""

    num_experts: int
    layers: torch.nn.ModuleList
    route: torch.nn.Module | None
    route_units: torch.Tensor
    dispatch: str
    dense_max_ratio: float
    capacity_factor: float | None

    def resolved_dispatch(self, k: int, batch: int) -> str:
        """auto, by benchmarks/moe_dispatch.py (batch 1 and 256, E = 8, 16, 64, k = 2): a batch with
        fewer (sample, expert) pairs than experts runs `dense` while E <= 4k (a few experts: one
        batched pass beats a Python step per active expert) and `grouped` above (only the active
        experts' weights are read: flat in E); a larger batch runs `dense` when E <= dense_max_ratio
        * k, else `sorted` where it averages SORTED_MIN_ROWS rows per expert or more, else `capacity`.
        `sorted` does not pad to the busiest expert, which trained gates make busy (exported sgmoe at
        90%, batch 256: 0.79 vs 1.22 ms; ptsne_moe's training step 2.92 vs 3.30 ms, inference equal);
        under uniform routing capacity is 2-18% faster (E = 8-16, k = 1-2) and at 8 rows per expert
        (E = 64) grouped matmuls lose. `capacity` also where its buffers matter: a fixed capacity_factor
        (drops), a hook on an expert layer (it must see its call), an expert layer running a sparse
        kernel for its full pass (export); and off the CPU (measured here only; CUDA's grouped
        matmul is written for bfloat16)."""
        if self.dispatch != "auto":
            return self.dispatch
        if batch * k < self.num_experts:
            return "dense" if self.num_experts <= 4 * k else "grouped"
        if self.num_experts <= self.dense_max_ratio * k:
            return "dense"
        rows = batch * k / self.num_experts
        return "sorted" if rows >= SORTED_MIN_ROWS and self._sortable(math.ceil(rows)) else "capacity"

    def _expert_layers(self) -> list[torch.nn.Module]:
        return [*self.layers, *([self.route] if self.route is not None else [])]

    def _hooked(self) -> bool:
        return any(layer._forward_hooks or layer._forward_pre_hooks for layer in self._expert_layers())

    def _sortable(self, rows: int) -> bool:
        cpu = self.route_units.device.type == "cpu"
        dense = all(layer.dense_pass(rows) for layer in self._expert_layers())
        return cpu and self.capacity_factor is None and not self._hooked() and dense

    def combine_pairs(self, x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        batch, k = indices.shape
        xp = x.repeat_interleave(k, dim=0).unsqueeze(1)  # (B*k, 1, in), sample-major like indices
        out = self.experts(xp, indices.reshape(-1)).squeeze(1)  # (B*k, C)
        return (out * values.reshape(-1, 1)).view(batch, k, -1).sum(1)

    def combine_dense(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.experts(x.unsqueeze(0).expand(self.num_experts, -1, -1))  # (E, B, C)
        return torch.einsum("be,ebc->bc", weights, out)

    def _sorted_pairs(self, x: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Pairs sorted by expert (stable): their order, the sample of each sorted pair, its expert,
        each expert's pair count, and the sorted pairs' inputs."""
        k = indices.shape[1]
        expert = indices.reshape(-1)
        order = torch.argsort(expert, stable=True)
        token = order // k  # pairs are sample-major: pair p belongs to sample p // k
        counts = torch.bincount(expert, minlength=self.num_experts)
        return order, token, expert[order], counts, x.index_select(0, token)

    @staticmethod
    def _combine_sorted_rows(
        out: torch.Tensor, values: torch.Tensor, order: torch.Tensor, token: torch.Tensor
    ) -> torch.Tensor:
        """The sorted pairs' outputs weighted by their gate values and summed back per sample."""
        out = out * values.reshape(-1)[order].unsqueeze(1)
        return out.new_zeros(values.shape[0], out.shape[1]).index_add(0, token, out)

    def combine_grouped(self, x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Pairs sorted by expert; each expert that has pairs runs once on its contiguous rows with a
        view of its own weights: no padding, no copied weights, a Python step per active expert."""
        order, token, _, counts, xs = self._sorted_pairs(x, indices)
        weights = self._stacked_weights()
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):  # one host read: free on CPU
            if n:
                outs.append(self.expert_rows(xs[start : start + n], e, weights))
                start += n
        return self._combine_sorted_rows(torch.cat(outs), values, order, token)

    def combine_sorted(self, x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Pairs sorted by expert, each layer one grouped matmul over the sorted rows (no padding). An
        expert layer with a hook (prune=obs collects its inputs) must see its call: capacity then."""
        if self._hooked():
            return self.combine_capacity(x, indices, values)
        order, token, rows, counts, h = self._sorted_pairs(x, indices)
        offs = counts.cumsum(0).to(torch.int32)
        last, routed = len(self.layers) - 1, None
        for i, layer in enumerate(self.layers):
            if i == 0 and self.route is not None:
                w, b = self.fused_first_weights()
                z = grouped_linear(h, w, b, offs, rows)
                hidden = layer.out_features
                z, routed = z[:, :hidden], self._dropout(F.relu(z[:, hidden:]))
            else:
                z = grouped_linear(h, layer._drop(layer.masked_weight()), layer.bias, offs, rows)
            if i == 1 and routed is not None:
                z = z + grouped_linear(routed, self.route._drop(self.route.masked_weight()), None, offs, rows)
            h = self._dropout(F.relu(z)) if i < last else z
        return self._combine_sorted_rows(h, values, order, token)

    def _stacked_weights(self) -> list[torch.Tensor]:
        """Every expert layer's masked weight (then the route layer's), computed once per pass."""
        return [layer.masked_weight() for layer in self._expert_layers()]

    def expert_rows(self, x: torch.Tensor, e: int, weights: list[torch.Tensor]) -> torch.Tensor:
        """(N, in) -> (N, classes) through expert e alone (its route units included); `weights` from
        `_stacked_weights()`."""
        h, last = x, len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z = layer.run_one(h, e, weights[i])
            if i == 1 and self.route is not None:
                first, units = self.layers[0], self.route_units[e]
                w = first._drop(weights[0].reshape(-1, first.in_features)[units])
                b = first.bias.reshape(-1)[units] if first.bias is not None else None
                z = z + self.route.run_one(self._dropout(F.relu(F.linear(x, w, b))), e, weights[-1])
            h = self._dropout(F.relu(z)) if i < last else z
        return h

    def capacity(self, batch: int, k: int, counts: torch.Tensor) -> int:
        if self.capacity_factor is None:
            return max(int(counts.max()), 1)  # exact: the busiest expert's load
        return max(1, min(batch, math.ceil(self.capacity_factor * batch * k / self.num_experts)))

    def _slots(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For the pairs of `indices` (B, k), sample-major: each pair's buffer slot (expert * cap +
        rank among its expert's pairs, in sample order), whether it fits the capacity, and cap."""
        batch, k = indices.shape
        expert = indices.reshape(-1)
        counts = torch.bincount(expert, minlength=self.num_experts)
        order = torch.argsort(expert, stable=True)
        starts = counts.cumsum(0) - counts
        rank = torch.empty_like(expert)
        rank[order] = torch.arange(len(expert), device=expert.device) - starts[expert[order]]
        cap = self.capacity(batch, k, counts)
        keep = rank < cap
        return torch.where(keep, expert * cap + rank, 0), keep, cap

    def combine_capacity(self, x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        batch, k = indices.shape
        n_exp = self.num_experts
        slot, keep, cap = self._slots(indices)
        # Which sample fills each buffer row. Empty rows read sample 0: their outputs are never read
        # back, so no zero row (and no copy of x) is needed. Kept slots are unique; dropped pairs go
        # to distinct scratch rows past the buffer: a deterministic scatter.
        token = torch.arange(batch, device=x.device).repeat_interleave(k)
        scratch = n_exp * cap + torch.arange(batch * k, device=x.device)
        fill = torch.zeros(n_exp * cap + batch * k, dtype=torch.long, device=x.device)
        fill.scatter_(0, torch.where(keep, slot, scratch), token)
        xe = x.index_select(0, fill[: n_exp * cap]).view(n_exp, cap, -1)
        out = self.experts(xe).reshape(n_exp * cap, -1).index_select(0, slot).view(batch, k, -1)
        if self.capacity_factor is None:  # exact capacity: nothing is dropped
            return torch.bmm(values.unsqueeze(1), out).squeeze(1)
        return self._after_drops(x, indices, values, keep.view(batch, k), out)

    def _after_drops(
        self, x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """Combine kept pairs only, their gate values renormalised so that each sample keeps its total
        gate mass; a sample whose pairs were all dropped runs its top-1 expert alone in an overflow
        pass (the pairs path), weighted by that whole mass (1 for every softmax gate of ssmoe)."""
        mass = values.sum(1, keepdim=True)
        kept = values * keep
        kept = kept * (mass / kept.sum(1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny))
        y = torch.bmm(kept.unsqueeze(1), out).squeeze(1)
        lost = (~keep.any(1)).nonzero().squeeze(1)
        if len(lost) == 0:
            return y
        top1 = indices[lost].gather(1, values[lost].argmax(1, keepdim=True))
        return y.index_put((lost,), self.combine_pairs(x[lost], top1, mass[lost]))

    @torch.no_grad()
    def drop_counts(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(pairs, dropped_pairs, samples_with_all_pairs_dropped) of x as one eval-mode batch: pairs
        over a fixed capacity (model.capacity_factor) are dropped; only the capacity path drops."""
        was_training = self.gate.training
        self.gate.eval()
        try:
            indices = self.gate(x).indices
        finally:
            self.gate.train(was_training)
        batch, k = indices.shape
        if self.capacity_factor is None or self.resolved_dispatch(k, batch) != "capacity":
            return batch * k, 0, 0
        keep = self._slots(indices)[1].view(batch, k)
        return batch * k, int((~keep).sum()), int((~keep.any(1)).sum())
