"""Sparse inference: CSR versions of the masked layers, swapped in where they measure faster."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

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


class CSRLinear(nn.Module):
    """Inference-only MaskedLinear with its weight in CSR: y = (W_csr @ x^T)^T + b."""

    def __init__(self, layer: MaskedLinear) -> None:
        super().__init__()
        self.weight_csr = to_csr(layer.masked_weight().detach())
        self.bias = layer.bias
        self.role = layer.role

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A contiguous x^T makes the CSR kernel 2x faster than a strided view (measured, torch 2.13 CPU).
        out = torch.sparse.mm(self.weight_csr, x.reshape(-1, x.shape[-1]).T.contiguous()).T
        out = out.reshape(*x.shape[:-1], -1)
        return out + self.bias if self.bias is not None else out


class CSRExpertLinear(nn.Module):
    """Inference-only ExpertLinear with CSR weights, chosen per use by measurement:

    - `full` (a pass of every expert on its row block: dense and capacity dispatch): the E expert
      matrices as one block-diagonal CSR matrix, so all experts run in one sparse matmul;
    - `one` (one expert on its rows: grouped dispatch, `run_one`): that expert's own CSR matrix.

    A use whose flag is off runs the dense masked weight, which is also kept for readers of single
    rows (routes) and for the pairs dispatch (a few gathered experts: dense is the right kernel)."""

    def __init__(self, layer: ExpertLinear, full: bool = True, one: bool = True) -> None:
        super().__init__()
        w = layer.masked_weight().detach()
        self.num_experts, self.out_features, self.in_features = w.shape
        self.dense_weight = w
        self.bias = layer.bias
        self.role = layer.role
        self.full, self.one = full, one
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

    def kernel(self) -> str:
        """What runs, for the run's record: e.g. "full=csr one=dense"."""
        return f"full={'csr' if self.full else 'dense'} one={'csr' if self.one else 'dense'}"

    def gather_rows(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ExpertLinear.gather_rows (route units read single rows: the dense copy serves them)."""
        w = self.dense_weight.reshape(-1, self.in_features)[units]
        return w, (self.bias.reshape(-1)[units] if self.bias is not None else None)

    def run_one(self, x: torch.Tensor, expert: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """As ExpertLinear.run_one; `weight` is ignored (this layer's weights are fixed)."""
        bias = self.bias[expert] if self.bias is not None else None
        if not self.one:
            return F.linear(x, self.dense_weight[expert], bias)
        out = torch.sparse.mm(self.expert_csr[expert], x.T.contiguous()).T
        return out + bias if bias is not None else out

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        if experts is not None or not self.full:
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


def _expert_kernels(layer: ExpertLinear, rows: int, min_speedup: float) -> CSRExpertLinear:
    """CSRExpertLinear with each use on CSR where measured faster than the dense layer: a full pass
    over `rows` rows per expert, and one expert on one row."""
    sparse = CSRExpertLinear(layer)
    x = torch.randn(layer.num_experts, rows, layer.in_features, device=layer.weight.device)
    sparse.full = latency_ms(layer, x, repeats=15) > min_speedup * latency_ms(sparse, x, repeats=15)
    x1 = x[0, :1]
    dense_one = latency_ms(lambda v: layer.run_one(v, 0), x1, repeats=15)
    sparse.one = dense_one > min_speedup * latency_ms(lambda v: sparse.run_one(v, 0), x1, repeats=15)
    return sparse


def use_sparse_kernels(
    model: nn.Module, batch_size: int = 256, min_sparsity: float = 0.5, min_speedup: float = 1.1
) -> dict[str, bool]:
    """Replace each masked layer by its CSR version where a quick measurement shows it faster (by
    `min_speedup`); layers below `min_sparsity` are not tried, nor layers only training uses
    (`train_only`: inference never runs them, so they are neither timed nor counted). A plain layer
    is timed at `batch_size` rows; an expert layer twice, for its two uses (CSRExpertLinear): a full
    pass at batch_size * k / E rows per expert, and one expert on one row (grouped dispatch at small
    batches). Returns whether each layer runs CSR anywhere; `kernels(model)` says where."""
    decisions: dict[str, bool] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, MaskedLinear | ExpertLinear) or layer.train_only:
            continue
        if 1 - layer.nonzero_weights() / layer.weight.numel() < min_sparsity:
            decisions[name] = False
            continue
        device = layer.weight.device
        # 15 timed calls after 5 untimed ones: enough to rank two kernels, quick at load time.
        if isinstance(layer, MaskedLinear):
            sparse, x = CSRLinear(layer), torch.randn(batch_size, layer.in_features, device=device)
            faster = latency_ms(layer, x, repeats=15) > min_speedup * latency_ms(sparse, x, repeats=15)
        else:
            sparse = _expert_kernels(layer, _expert_rows(model, name, layer, batch_size), min_speedup)
            faster = sparse.full or sparse.one
        decisions[name] = faster
        if faster:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.ModuleList | nn.Sequential):
                parent[int(child)] = sparse
            else:
                setattr(parent, child, sparse)
    return decisions


def kernels(model: nn.Module) -> dict[str, str]:
    """The kernel each masked layer of an inference model runs, by qualified name: "dense", "csr",
    or, for an expert layer, "full=<kernel> one=<kernel>" (see CSRExpertLinear)."""
    found: dict[str, str] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, CSRExpertLinear):
            found[name] = layer.kernel()
        elif isinstance(layer, CSRLinear):
            found[name] = "csr"
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
