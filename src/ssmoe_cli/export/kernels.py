"""Sparse inference: CSR versions of the masked layers, swapped in where they measure faster."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ssmoe_cli.models.layers import ExpertLinear, MaskedLinear
from ssmoe_cli.timing import latency_ms


@contextlib.contextmanager
def quiet_csr() -> Iterator[None]:
    """Silence torch's "Sparse CSR tensor support is in beta" notice, raised (once per process) by
    the CSR tensor constructor (aten SparseCsrTensorImpl.cpp) whenever one is built: ssmoe relies
    only on CSR matmul, which is stable. Only that message, and only here, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        yield


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """CSR of a 2-D tensor."""
    with quiet_csr():
        return weight.to_sparse_csr()


# A pass over at most this many rows (per expert, for an expert layer) is "few rows" (batch 1; a dense
# dispatch of a small batch), timed and chosen apart from larger ones: which kernel wins differs
# (a CSR product reads only the nonzero weights; at many rows the dense product's arithmetic wins).
FEW_ROWS = 4


def csr_for(rows: int, full: bool, few: bool) -> bool:
    """Whether a pass over `rows` rows (per expert) runs CSR, given the choices for each regime."""
    return few if rows <= FEW_ROWS else full


def kernel_name(**uses: bool) -> str:
    """e.g. "full=csr few=dense" (True: CSR)."""
    return " ".join(f"{use}={'csr' if on else 'dense'}" for use, on in uses.items())


class CSRLinear(nn.Module):
    """Inference-only MaskedLinear with its weight in CSR, y = (W_csr @ x^T)^T + b, chosen per use by
    measurement: `full` (more than FEW_ROWS rows) and `few` (at most FEW_ROWS: batch 1). A use whose
    flag is off runs the dense masked weight, kept for it."""

    def __init__(self, layer: MaskedLinear, full: bool = True, few: bool = True) -> None:
        super().__init__()
        self.dense_weight = layer.masked_weight().detach()
        self.weight_csr = to_csr(self.dense_weight)
        self.bias = layer.bias
        self.role = layer.role
        self.full, self.few = full, few

    def runs_csr(self) -> bool:
        """Whether any use runs CSR."""
        return self.full or self.few

    def kernel(self) -> str:
        """What runs, for the run's record: "csr" for both uses, else e.g. "full=csr few=dense"."""
        return "csr" if self.full and self.few else kernel_name(full=self.full, few=self.few)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if not csr_for(len(rows), self.full, self.few):
            return F.linear(x, self.dense_weight, self.bias)
        # A contiguous x^T makes the CSR kernel 2x faster than a strided view (measured, torch 2.13 CPU).
        out = torch.sparse.mm(self.weight_csr, rows.T.contiguous()).T
        out = out.reshape(*x.shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


class CSRExpertLinear(nn.Module):
    """Inference-only ExpertLinear with CSR weights, chosen per use by measurement:

    - `full` (a pass of every expert on its row block: dense and capacity dispatch), and `few` (the
      same pass with at most FEW_ROWS rows per expert): the E expert matrices as one block-diagonal
      CSR matrix, so all experts run in one sparse matmul;
    - `one` (one expert on its rows: grouped dispatch, `run_one`): that expert's own CSR matrix.

    A use whose flag is off runs the dense masked weight, which is also kept for readers of single
    rows (routes) and for the pairs dispatch (a few gathered experts: dense is the right kernel)."""

    def __init__(self, layer: ExpertLinear, full: bool = True, one: bool = True, few: bool = True) -> None:
        super().__init__()
        w = layer.masked_weight().detach()
        self.num_experts, self.out_features, self.in_features = w.shape
        self.dense_weight = w
        self.bias = layer.bias
        self.role = layer.role
        self.full, self.one, self.few = full, one, few
        self._rows_cache: tuple[tuple[int, ...], torch.Tensor, torch.Tensor | None] | None = None
        self.expert_csr = [to_csr(w[e]) for e in range(self.num_experts)]
        blocks = [w[e].to_sparse_coo() for e in range(self.num_experts)]
        rows = torch.cat([b.indices()[0] + e * self.out_features for e, b in enumerate(blocks)])
        cols = torch.cat([b.indices()[1] + e * self.in_features for e, b in enumerate(blocks)])
        vals = torch.cat([b.values() for b in blocks])
        size = (self.num_experts * self.out_features, self.num_experts * self.in_features)
        # Indices taken from a dense tensor's own nonzeros are valid by construction: saying so
        # skips the O(nnz) check and torch's "Sparse invariant checks are implicitly disabled" warning.
        coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, size, check_invariants=False)
        self.weight_csr = to_csr(coo.coalesce())

    def masked_weight(self) -> torch.Tensor:
        return self.dense_weight

    def _drop(self, weight: torch.Tensor) -> torch.Tensor:
        return weight  # inference only: no DropConnect

    def inference_cache_key(self) -> tuple[int, ...]:
        """As Masked.inference_cache_key: this layer's weights never change, so one constant key."""
        return ()

    def dense_pass(self, rows: int) -> bool:
        """Whether a full pass over `rows` rows per expert runs the dense weight (not CSR)."""
        return not csr_for(rows, self.full, self.few)

    def runs_csr(self) -> bool:
        """Whether any use runs CSR."""
        return self.full or self.few or self.one

    def kernel(self) -> str:
        """What runs, for the run's record: e.g. "full=csr few=csr one=dense"."""
        return kernel_name(full=self.full, few=self.few, one=self.one)

    def gather_rows(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ExpertLinear.gather_rows (route units read single rows: the dense copy serves them),
        gathered once per `units` (the weights are fixed; the routes' units, a buffer, rarely change)."""
        key = (units.data_ptr(), units._version if not units.is_inference() else -1, *units.shape)
        if self._rows_cache is None or self._rows_cache[0] != key:
            w = self.dense_weight.reshape(-1, self.in_features)[units]
            self._rows_cache = (key, w, self.bias.reshape(-1)[units] if self.bias is not None else None)
        return self._rows_cache[1], self._rows_cache[2]

    def run_one(self, x: torch.Tensor, expert: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """As ExpertLinear.run_one; `weight` is ignored (this layer's weights are fixed)."""
        bias = self.bias[expert] if self.bias is not None else None
        if not self.one:
            return F.linear(x, self.dense_weight[expert], bias)
        out = torch.sparse.mm(self.expert_csr[expert], x.T.contiguous()).T
        return out + bias if bias is not None else out

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        if experts is not None or self.dense_pass(x.shape[1]):
            w = self.dense_weight if experts is None else self.dense_weight[experts]
            b = (self.bias if experts is None else self.bias[experts]).unsqueeze(1) if self.bias is not None else 0
            return torch.bmm(x, w.transpose(1, 2)) + b
        e, n, d = x.shape
        out = torch.sparse.mm(self.weight_csr, x.transpose(1, 2).reshape(e * d, n).contiguous())  # (E*out, N)
        out = out.reshape(e, self.out_features, n).transpose(1, 2)
        return out + self.bias.unsqueeze(1) if self.bias is not None else out


def _expert_rows(model: nn.Module, name: str, layer: ExpertLinear, batch_size: int) -> int:
    """Rows per expert a full pass over `batch_size` samples gives `layer`: batch * k / E (the
    capacity dispatch's mean load), k read from the mixture that holds the layer (else 1)."""
    k = 1
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        owner = model.get_submodule(".".join(parts[: i - 1])) if i > 1 else model
        if isinstance(getattr(owner, "k", None), int):
            k = owner.k
            break
    return max(1, math.ceil(batch_size * k / layer.num_experts))


def _sparse_faster(sparse: Callable, dense: Callable, x: torch.Tensor, min_speedup: float) -> bool:
    """Whether `sparse(x)` beats `dense(x)` by `min_speedup`: the two timed in turn, 3 rounds of 7
    calls each, the best round of each compared. Timed once each, one after the other, a hiccup of
    a shared machine during either decided: the same layer's choice flipped between runs."""
    best_dense = best_sparse = math.inf
    for _ in range(3):
        best_dense = min(best_dense, latency_ms(dense, x, repeats=7, warmup=2))
        best_sparse = min(best_sparse, latency_ms(sparse, x, repeats=7, warmup=2))
    return best_dense > min_speedup * best_sparse


def _expert_kernels(layer: ExpertLinear, rows: int, min_speedup: float) -> CSRExpertLinear:
    """CSRExpertLinear with each use on CSR where measured faster than the dense layer: a full pass
    over `rows` rows per expert, one over one row per expert (few), and one expert on one row."""
    sparse = CSRExpertLinear(layer)
    x = torch.randn(layer.num_experts, max(rows, FEW_ROWS + 1), layer.in_features, device=layer.weight.device)
    sparse.full = _sparse_faster(sparse, layer, x, min_speedup)
    sparse.few = _sparse_faster(sparse, layer, x[:, :1], min_speedup)
    one_sparse, one_dense = (lambda v: sparse.run_one(v, 0)), (lambda v: layer.run_one(v, 0))
    sparse.one = _sparse_faster(one_sparse, one_dense, x[0, :1], min_speedup)
    return sparse


def refine_in_context(model: nn.Module, inputs: torch.Tensor, min_speedup: float = 1.1) -> None:
    """Per-layer choices are timed on each layer alone; the whole model may still run faster dense
    (layer 0 leaves its fused pass with the routes once it runs CSR; caches). For each use of the
    expert layers, its CSR choices are kept only where the whole model runs faster with them than
    with none, by `min_speedup`: full passes on `inputs`, few-row passes and single experts on its
    first row. Plain layers keep their choice (each is its own pass)."""
    layers = [m for m in model.modules() if isinstance(m, CSRExpertLinear)]
    for uses, x in ((("full",), inputs), (("few", "one"), inputs[:1])):
        chosen = [(layer, use) for layer in layers for use in uses if getattr(layer, use)]
        if not chosen:
            continue

        def run(on: bool, chosen: list[tuple[CSRExpertLinear, str]] = chosen) -> Callable:
            def forward(v: torch.Tensor) -> object:
                for layer, use in chosen:
                    setattr(layer, use, on)
                return model(v)

            return forward

        keep = _sparse_faster(run(True), run(False), x, min_speedup)
        for layer, use in chosen:
            setattr(layer, use, keep)


def use_sparse_kernels(
    model: nn.Module,
    batch_size: int = 256,
    min_sparsity: float = 0.5,
    min_speedup: float = 1.1,
    inputs: torch.Tensor | None = None,
) -> dict[str, bool]:
    """Replace each masked layer by its CSR version where a quick measurement shows it faster (by
    `min_speedup`); layers below `min_sparsity` are not tried, nor layers only training uses
    (`train_only`: inference never runs them, so they are neither timed nor counted). A plain layer
    is timed at `batch_size` rows and at one row; an expert layer for each of its uses (CSRExpertLinear): a full
    pass at batch_size * k / E rows per expert, one at one row per expert (dense dispatch of a small
    batch), and one expert on one row (grouped dispatch at small batches). With `inputs` (samples
    the model takes, e.g. a test batch), the expert layers' choices are then checked on the whole
    model (refine_in_context). Returns whether each layer runs CSR anywhere; `kernels(model)` says
    where."""
    decisions: dict[str, bool] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, MaskedLinear | ExpertLinear) or layer.train_only:
            continue
        if 1 - layer.nonzero_weights() / layer.weight.numel() < min_sparsity:
            decisions[name] = False
            continue
        device = layer.weight.device
        if isinstance(layer, MaskedLinear):
            sparse, x = CSRLinear(layer), torch.randn(max(batch_size, FEW_ROWS + 1), layer.in_features, device=device)
            sparse.full = _sparse_faster(sparse, layer, x, min_speedup)
            sparse.few = _sparse_faster(sparse, layer, x[:1], min_speedup)
        else:
            sparse = _expert_kernels(layer, _expert_rows(model, name, layer, batch_size), min_speedup)
        decisions[name] = sparse.runs_csr()
        if decisions[name]:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.ModuleList | nn.Sequential):
                parent[int(child)] = sparse
            else:
                setattr(parent, child, sparse)
    if inputs is not None:
        refine_in_context(model, inputs, min_speedup)
        for name, layer in model.named_modules():
            if isinstance(layer, CSRExpertLinear):
                decisions[name] = layer.runs_csr()
    return decisions


def kernels(model: nn.Module) -> dict[str, str]:
    """The kernel each masked layer of an inference model runs, by qualified name: "dense", "csr",
    "full=<kernel> few=<kernel>" for a plain layer that runs CSR for one use only, and for an expert
    layer "full=<kernel> few=<kernel> one=<kernel>" (see CSRLinear, CSRExpertLinear)."""
    found: dict[str, str] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, CSRExpertLinear | CSRLinear):
            found[name] = layer.kernel()
        elif isinstance(layer, MaskedLinear | ExpertLinear) and not layer.train_only:
            found[name] = "dense"
    return found


def dispatch_choices(model: nn.Module, batches: tuple[int, ...] = (1, 256)) -> dict[str, dict[str, str]]:
    """The dispatch each mixture inside `model` runs at each batch size, by qualified name ("" for the
    model itself): e.g. {"": {"b1": "grouped", "b256": "capacity"}}. Empty for a model without one."""
    found: dict[str, dict[str, str]] = {}
    for name, module in model.named_modules():
        resolve = getattr(module, "resolved_dispatch", None)
        if callable(resolve):
            k = min(module.k, module.num_experts)
            found[name] = {f"b{b}": resolve(k, b) for b in batches}
    return found
