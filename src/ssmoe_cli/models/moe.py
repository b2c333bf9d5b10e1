"""Mixture of experts: a gate picks k experts per sample; experts may share sparse routes.

    y(x) = sum_{e in topk(x)} g_e(x) * E_e(x)

Each expert is an MLP in -> hidden... -> classes (no softmax inside). With a topology other than
`isolated`, expert b's second layer also reads a few first-layer units of the experts it links to
(its route units), so a sample routed to b computes b plus those few units, not the whole source
experts: the paper's "conditionally active subnetwork" (docs/architecture.md).

Training-only regularisers of the experts (no effect in eval mode): `dropout` on every hidden unit
after its ReLU (route units included, they are hidden units of their source experts), `dropconnect`
on every expert and route weight (ssmoe_cli.models.layers); the gate is left alone by both.

Expert weights are stacked (ExpertLinear: one (E, out, in) tensor per layer); how pairs are batched
through them (model.dispatch) is ssmoe_cli.models.dispatch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.models.accounting import Accounting, nonzero_params, total_params, train_only_params
from ssmoe_cli.models.base import Model, ModelOutput, Routing
from ssmoe_cli.models.dispatch import DISPATCH_MODES, Dispatch
from ssmoe_cli.models.gating.base import Gate
from ssmoe_cli.models.layers import (
    ExpertLinear,
    batched_linear,
    drop_probability,
    set_dropconnect,
    set_role,
    with_rows,
)
from ssmoe_cli.models.topology import Topology
from ssmoe_cli.models.topology.isolated import Isolated


class MixtureOfExperts(Dispatch, Model):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        gate: Gate,
        topology: Topology | None = None,
        num_experts: int = 16,
        k: int = 2,
        expert_hidden: Sequence[int] = (64,),
        dispatch: str = "auto",
        dense_max_ratio: float = 1.0,
        capacity_factor: float | None = None,
        seed: int = 0,
        dropout: float = 0.0,
        dropconnect: float = 0.0,
    ) -> None:
        super().__init__()
        if dispatch not in DISPATCH_MODES:
            raise ValueError(f"model.dispatch must be one of {DISPATCH_MODES}, got {dispatch!r}")
        if not isinstance(gate, Gate):
            raise TypeError(
                f"model.gate: {type(gate).__name__} is not a gate; a gate subclasses ssmoe_cli.models.gating.Gate"
            )
        self.num_experts, self.k = num_experts, k
        self.gate = set_role(gate, "gate")
        self.topology = topology or Isolated()
        self.dispatch, self.dense_max_ratio, self.capacity_factor = dispatch, dense_max_ratio, capacity_factor
        self.dropout = drop_probability("model.dropout", dropout)
        sizes = [in_features, *expert_hidden, num_classes]
        self.layers = nn.ModuleList(ExpertLinear(num_experts, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.layers[-1].role = "output"
        self.route: ExpertLinear | None = None
        self.register_buffer("route_units", torch.zeros(num_experts, 0, dtype=torch.long))
        self.register_buffer("route_sources", torch.zeros(num_experts, 0, dtype=torch.long))
        self._generator = torch.Generator().manual_seed(seed)
        if self.topology.fan_out > 0:
            if len(expert_hidden) == 0:
                raise ValueError(
                    "routes need a hidden layer in the experts: set model.expert_hidden, or topology=isolated"
                )
            self._build_routes(self._generator)
        # After the routes exist, so that they get it too; set_dropconnect skips the gate.
        set_dropconnect(self, dropconnect)

    # -- routes ---------------------------------------------------------------------------------
    def _build_routes(self, generator: torch.Generator) -> None:
        """(Re)draw the links on the gate's current map; parameter shapes never change on a redraw."""
        hidden = self.layers[0].out_features
        routes = self.topology.routes(self.num_experts, hidden, self.gate.positions, generator)
        if self.route is None:
            self.route = ExpertLinear(self.num_experts, routes.width, self.layers[1].out_features, bias=False)
            self.route.role = "route"
            self.route_units = routes.units
            self.route_sources = routes.sources
        elif routes.width != self.route.in_features:
            raise ValueError("a topology redraw changed the number of route units; it must keep in-degrees fixed")
        else:
            self.route_units.copy_(routes.units)
            self.route_sources.copy_(routes.sources)
        # Padding (experts with fewer in-links) is masked: it is no parameter and reads nothing.
        self.route.set_mask(routes.valid.unsqueeze(1).expand(-1, self.route.out_features, -1))

    def prepare(self, x_train: torch.Tensor, generator: torch.Generator) -> None:
        """Before classification training: let the gate fit its map, then lay the links on it."""
        self.gate.prepare(x_train, generator)
        if self.route is not None and self.topology.uses_positions and self.gate.positions is not None:
            self._build_routes(generator)

    # -- the model interface ------------------------------------------------------------------------
    def routing(self) -> Routing:
        hidden = self.layers[0].out_features
        return Routing(
            gate=self.gate,
            in_links=self.route_sources,
            route=self.route,
            route_columns=self.route_units // hidden,
            run_experts=self.experts,
            drop_counts=self.drop_counts,
        )

    @contextlib.contextmanager
    def vmappable(self) -> Iterator[None]:
        """Dense dispatch: vmap sees batches of one sample, where capacity dispatch never overflows
        and computes the same function, but its buffer size depends on the routing."""
        before = self.dispatch
        self.dispatch = "dense"
        try:
            yield
        finally:
            self.dispatch = before

    # -- experts ----------------------------------------------------------------------------------
    def route_activations(self, xe: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """(E, N, in) -> (E, N, R): for each expert, the source units it reads, computed on its inputs
        (with `experts`, block m is for expert experts[m])."""
        units = self.route_units if experts is None else self.route_units[experts]
        # Only the source rows are gathered (and masked): never a pass over every expert's weights.
        w, b = self.layers[0].gather_rows(units)  # (E, R, in), (E, R)
        return self._dropout(F.relu(batched_linear(xe, w, b)))

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        # A Python test, not F.dropout(p=0): at 0 the pass has no extra op at all.
        return F.dropout(h, self.dropout, training=True) if self.training and self.dropout > 0 else h

    def experts(self, xe: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """Run expert e on row block e: (E, N, in) -> (E, N, classes); with `experts` (M,), run
        expert experts[m] on block m of (M, N, in)."""
        h, routed = xe, None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == 0 and experts is None and self._fusable(xe.shape[1]):
                z, routed = self._first_with_routes(xe)
            else:
                z = layer(h, experts)
            if i == 1 and self.route is not None:
                routed = self.route_activations(xe, experts) if routed is None else routed
                z = z + self.route(routed, experts)
            h = self._dropout(F.relu(z)) if i < last else z
        return h

    def _fusable(self, rows: int) -> bool:
        first = self.layers[0]
        # A hook on layer 0 (prune=obs collects its inputs there; a user's probe) must see its call:
        # the fused pass would bypass it, so a hooked layer runs on its own. An inference layer whose
        # measured kernel for this many rows is sparse (export.kernels) runs that kernel instead.
        hooked = bool(first._forward_hooks or first._forward_pre_hooks)
        return self.route is not None and first.bias is not None and not hooked and first.dense_pass(rows)

    def _first_with_routes(self, xe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 0 of every expert and its route units in one batched matmul: both read the same
        inputs, and a separate pass for the few route units (R columns) costs a skinny matmul of
        its own (measured: half the time of layer 0's). Returns layer 0's pre-activation (E, N, H)
        and the route activations (E, N, R)."""
        w, b = self.fused_first_weights()
        out = batched_linear(xe, w, b)
        hidden = self.layers[0].out_features
        return out[..., :hidden], self._dropout(F.relu(out[..., hidden:]))

    def fused_first_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 0's masked weight and bias with each expert's route rows appended: (E, H + R, in),
        (E, H + R); built once per weight version in inference."""
        first = self.layers[0]
        # Cached only for inference (eval, no autograd): training draws DropConnect afresh per pass.
        layer_key = None if self.training or torch.is_grad_enabled() else first.inference_cache_key()
        cacheable = layer_key is not None
        key = (layer_key, self.route_units._version, self.route_units.data_ptr()) if cacheable else None
        cached = self.__dict__.get("_fused_cache")
        if not cacheable or cached is None or cached[0] != key:
            if self.training and getattr(first, "dropconnect", 0.0) > 0:  # route rows draw their own DropConnect
                rows, rows_b = first.gather_rows(self.route_units)  # (E, R, in), masked and dropped
                w = torch.cat([first._drop(first.masked_weight()), rows], 1)
                b = torch.cat([first.bias, rows_b], 1)
            else:
                w, b = with_rows(first.masked_weight(), first.bias, self.route_units)
            cached = (key, w, b)
            if cacheable:
                self.__dict__["_fused_cache"] = cached  # built once per weight version
        return cached[1], cached[2]

    # -- dispatch (ssmoe_cli.models.dispatch) ------------------------------------------------------
    def forward(self, x: torch.Tensor) -> ModelOutput:
        g = self.gate(x)
        mode = self.resolved_dispatch(g.indices.shape[1], len(x))
        if mode == "dense":
            y = self.combine_dense(x, g.weights)
        elif mode == "pairs":
            y = self.combine_pairs(x, g.indices, g.values)
        elif mode == "grouped":
            y = self.combine_grouped(x, g.indices, g.values)
        elif mode == "sorted":
            y = self.combine_sorted(x, g.indices, g.values)
        else:
            y = self.combine_capacity(x, g.indices, g.values)
        return ModelOutput(y, dict(g.aux))

    # -- accounting -------------------------------------------------------------------------------
    @torch.no_grad()
    def accounting(self, x: torch.Tensor | None = None) -> Accounting:
        """Exact per-sample active parameters and multiply-adds, averaged over x (eval mode).

        A sample uses: the gate network; all units of its active experts; the route units those
        experts read (each unit counted once even if several active experts read it); the
        later layers and route weights of its active experts. Masked and zero weights do not count,
        nor do weights only training uses (the gate's noise network). The gate's own share is
        reported apart: its nonzero parameters, and `Gate.active_params()` of every sample's pass.
        """
        first = self.layers[0]
        n_exp, hidden = self.num_experts, first.out_features
        unit_w = (first.masked_weight() != 0).sum(-1).reshape(-1).float()  # (E*H,) nonzero weights per unit
        unit_b = (first.bias != 0).reshape(-1).float()
        rest_w = torch.zeros(n_exp)
        rest_b = torch.zeros(n_exp)
        for layer in [*self.layers[1:], *([self.route] if self.route is not None else [])]:
            rest_w += (layer.masked_weight() != 0).flatten(1).sum(1).float().cpu()
            if layer.bias is not None:
                rest_b += (layer.bias != 0).sum(1).float().cpu()
        reads = torch.zeros(n_exp, n_exp * hidden)  # reads[e, u]: expert e reads unit u through a route
        if self.route is not None and self.route_units.numel():
            valid = self.route.mask[:, 0, :].float().cpu()
            reads.scatter_(1, self.route_units.cpu(), valid)
        gate_params, gate_macs = self.gate.active_params(), self.gate.active_macs()
        if x is None:  # no data: every sample assumed to use k experts (first k as a stand-in)
            active = torch.zeros(1, n_exp, dtype=torch.bool)
            active[0, : self.k] = True
        else:
            active = self.routing().active_experts(x).cpu()
        params, macs = [], []
        for a in active.float().split(4096):
            units = (a.repeat_interleave(hidden, dim=1) + a @ reads).clamp(max=1)
            macs.append(units @ unit_w.cpu() + a @ rest_w)
            params.append(units @ (unit_w + unit_b).cpu() + a @ (rest_w + rest_b))
        return Accounting(
            params_total=total_params(self),
            params_nonzero=nonzero_params(self),
            active_per_sample=float(torch.cat(params).mean()) + gate_params,
            flops_per_sample=float(torch.cat(macs).mean()) + gate_macs,
            train_only=train_only_params(self),
            gate_nonzero=nonzero_params(self.gate),
            gate_active=float(gate_params),
        )
