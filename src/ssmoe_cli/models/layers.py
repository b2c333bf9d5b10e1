"""The one masked-weight mechanism every layer of every model uses, so that pruning and accounting
see all weights: MaskedLinear (a plain linear layer) and ExpertLinear (one weight matrix per expert,
stacked, for the batched expert computations of a mixture of experts).

Each holds a boolean ``mask`` buffer of the weight's shape (saved with the state dict, 1 byte per
weight). The forward pass uses ``weight * mask``, so a masked weight gets no gradient; pruning code
zeroes a weight when it masks it and re-applies the mask after optimizer steps (ssmoe_cli.prune).

DropConnect (Wan et al. 2013) lives here too, once for every masked layer: with ``dropconnect = p >
0``, each forward pass in training multiplies the masked weight by a fresh Bernoulli(1 - p) draw
scaled by 1 / (1 - p) (inverted, so that inference needs no rescaling), one draw per weight per
forward pass, shared by the samples of the batch (Wan et al. drew one per sample; one per batch is
the usual cheaper variant and the same in expectation). Pruned weights stay zero whatever is
drawn. In eval mode, or at p = 0, the forward pass is exactly the plain masked one, with no extra
operation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Masked(nn.Module):
    """Base of the masked layers: a ``weight`` parameter, a same-shape boolean ``mask``, a ``bias``."""

    weight: nn.Parameter
    mask: torch.Tensor
    bias: nn.Parameter | None
    # What the layer is in its model, for selecting pruning targets: "hidden" (FCL and expert
    # hidden layers), "output" (the last layer that produces logits), "route" (inter-expert
    # routes), "gate" (the gating network). Models set it where the default is wrong.
    role: str = "hidden"
    # True for a layer only training uses (SGMoE's noise network W_noise): inference never reads it,
    # so accounting, pruning targets and the exported file leave it out (see `train_only_layers`).
    train_only: bool = False
    # DropConnect probability in training (see the module docstring); models set it with
    # `set_dropconnect`, which leaves gate layers alone.
    dropconnect: float = 0.0

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a new mask and zero the weights it removes."""
        self.mask.copy_(mask.to(dtype=torch.bool))
        self.weight.mul_(self.mask)

    def masked_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (differentiable): the weight itself while nothing is masked;
        without autograd (inference) the product is cached until the weight or the mask changes
        (their version counters): an exported or evaluated model never pays the multiplication per
        call."""
        if self.mask_is_full():  # nothing masked (yet): the product would be a copy of the weight
            return self.weight
        if torch.is_grad_enabled():  # a cached product must never be saved for backward
            return self.weight * self.mask
        key = self.inference_cache_key()
        if key is None:
            return self.weight * self.mask
        cached = self.__dict__.get("_masked_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.weight * self.mask)
            self.__dict__["_masked_cache"] = cached  # not a buffer: never saved, never moved
        return cached[1]

    def inference_cache_key(self) -> tuple[int, ...] | None:
        """What a cache of values computed from the weights (outside autograd) keys on: the weight's and
        mask's version counters and storage; None where they have no counters (inference tensors)."""
        if self.weight.is_inference() or self.mask.is_inference():
            return None
        return (self.weight._version, self.mask._version, self.weight.data_ptr(), self.mask.data_ptr())

    def dense_pass(self, rows: int) -> bool:
        """Whether a full pass over `rows` rows per expert multiplies the dense masked weight (always,
        here; an inference layer with sparse kernels may say otherwise): what fusing it with other
        dense products (MixtureOfExperts' layer 0 and its routes) needs."""
        return True

    def mask_is_full(self) -> bool:
        """Whether every weight is kept, re-read only when the mask changes (its version counter)."""
        if self.mask.is_inference():  # built under inference_mode: no version counter to key on
            return bool(self.mask.all())
        key = (self.mask._version, self.mask.data_ptr())
        cached = self.__dict__.get("_full_cache")
        if cached is None or cached[0] != key:
            cached = (key, bool(self.mask.all()))
            self.__dict__["_full_cache"] = cached
        return cached[1]

    def _drop(self, weight: torch.Tensor) -> torch.Tensor:
        """DropConnect on (part of) the masked weight: identity unless training with dropconnect > 0."""
        if not (self.training and self.dropconnect > 0):
            return weight
        keep = 1.0 - self.dropconnect
        return weight * torch.empty_like(weight).bernoulli_(keep) / keep

    def nonzero_weights(self) -> int:
        with torch.no_grad():
            return int(torch.count_nonzero(self.masked_weight()))

    def nonzero_params(self) -> int:
        bias = int(torch.count_nonzero(self.bias)) if self.bias is not None else 0
        return self.nonzero_weights() + bias


class MaskedLinear(Masked, nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._drop(self.masked_weight()), self.bias)


class ExpertLinear(Masked):
    """E independent linear maps stacked: weight (E, out, in), bias (E, out).

    ``forward(x)`` takes x of shape (E, N, in) (row block e goes through expert e) and returns
    (E, N, out) with one batched matmul. Initialised like nn.Linear, expert by expert.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features)) if bias else None
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)  # = nn.Linear's kaiming_uniform(a=sqrt(5)) bound
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self._init_mask()

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """x: (E, N, in), block e through expert e; or with `experts` (M,), block m through expert
        experts[m] (the weights are gathered: only those experts' matrices are read)."""
        if experts is None:
            w, b = self.masked_weight(), self.bias
        else:  # gather first, then mask: only the selected experts' matrices are touched
            w = self.weight[experts] * self.mask[experts]
            b = self.bias[experts] if self.bias is not None else None
        return batched_linear(x, self._drop(w), b)

    def run_one(self, x: torch.Tensor, expert: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(N, in) -> (N, out) through expert `expert` alone: its weight is a view of the stacked one
        (nothing copied). `weight`: this layer's masked_weight() when the caller has it already."""
        w = (self.masked_weight() if weight is None else weight)[expert]
        return F.linear(x, self._drop(w), self.bias[expert] if self.bias is not None else None)

    def gather_rows(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked weight rows and biases of output units given as flat indices e * out + j (any shape)."""
        w = self.weight.reshape(-1, self.in_features)[units]
        if not self.mask_is_full():  # nothing masked (yet): the product would be a copy of the rows
            w = w * self.mask.reshape(-1, self.in_features)[units]
        return self._drop(w), (self.bias.reshape(-1)[units] if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


def batched_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x (E, N, in) through w (E, out, in) and b (E, out): (E, N, out), block e through w[e].

    Where w is trained, computed as (w @ x^T)^T: its gradient (grad^T @ x) then comes out in w's own
    layout, while x @ w^T leaves a transposed one that accumulating (a strided copy, a strided add
    where w also feeds the routes) cost 0.6 ms of ptsne_moe's 6 ms training step. Inference keeps
    x @ w^T (no faster the other way, measured)."""
    if torch.is_grad_enabled() and w.requires_grad:
        xt = x.transpose(1, 2)
        out = torch.bmm(w, xt) if b is None else torch.baddbmm(b.unsqueeze(2), w, xt)
        return out.transpose(1, 2)
    wt = w.transpose(1, 2)
    return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)


class _WithRows(torch.autograd.Function):
    """(w, b) of an expert layer with rows of the same tensors appended to each expert: rows
    `units` (E, R), flat indices e * out + j, give (E, out + R, in) and (E, out + R). The backward
    adds the rows' gradients into w's in place: autograd's own (cat, then indexing) builds a zero
    tensor of w's size, scatters into it and adds it to w's gradient (~0.2 ms of ptsne_moe's 4-5 ms
    training step by torch.profiler; the step 3% faster in an interleaved A/B, 1 thread)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, b: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(units)
        return torch.cat([w, w.reshape(-1, w.shape[-1])[units]], 1), torch.cat([b, b.reshape(-1)[units]], 1)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor, grad_b: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (units,) = ctx.saved_tensors
        flat = units.reshape(-1)
        grads: list[torch.Tensor | None] = []
        for grad, needed in ((grad_w, ctx.needs_input_grad[0]), (grad_b, ctx.needs_input_grad[1])):
            if not needed:
                grads.append(None)
                continue
            out = grad.shape[1] - units.shape[1]
            own = grad[:, :out].contiguous()
            rows = grad[:, out:].reshape(len(flat), *grad.shape[2:])
            own.view(-1, *grad.shape[2:]).index_add_(0, flat, rows)
            grads.append(own)
        return grads[0], grads[1], None


def with_rows(w: torch.Tensor, b: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (E, out, in) and b (E, out) with rows `units` (E, R) of themselves appended to each expert
    (flat indices e * out + j): (E, out + R, in), (E, out + R); differentiable (see _WithRows)."""
    return _WithRows.apply(w, b, units)


def masked_layers(module: nn.Module) -> list[Masked]:
    return [m for m in module.modules() if isinstance(m, Masked)]


def train_only_layers(module: nn.Module) -> dict[str, Masked]:
    """The masked layers only training uses, by qualified name in `module`."""
    return {name: m for name, m in module.named_modules() if isinstance(m, Masked) and m.train_only}


def set_role(module: nn.Module, role: str) -> nn.Module:
    """Give every masked layer inside `module` the same role (e.g. a whole gate network)."""
    for layer in masked_layers(module):
        layer.role = role
    return module


def drop_probability(key: str, p: float) -> float:
    """`p` checked as a drop probability in [0, 1) (1 would drop everything and divide by zero)."""
    if not (isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p < 1.0):
        raise ValueError(f"{key}={p!r}: must be a number in [0, 1) (the probability of dropping; 0 = off)")
    return float(p)


def set_dropconnect(module: nn.Module, p: float) -> nn.Module:
    """DropConnect probability `p` on every masked layer inside `module` except the gate's: the gate
    decides which experts run, and dropping its weights would turn regularisation of the experts into
    random routing (SGMoE already adds its own learned noise there; the t-SNE gate is pretrained on
    its own loss and usually frozen)."""
    p = drop_probability("model.dropconnect", p)
    for layer in masked_layers(module):
        if layer.role != "gate":
            layer.dropconnect = p
    return module


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    """MaskedLinear layers of the given sizes with activations between them (none after the last).
    The last layer's role is "output", the others "hidden"."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(MaskedLinear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    layers[-1].role = "output"
    return nn.Sequential(*layers)
