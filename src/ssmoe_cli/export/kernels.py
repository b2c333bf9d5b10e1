"""Sparse inference: CSR versions of the masked layers, swapped in where they measure faster."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
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
    """Inference-only ExpertLinear: the E expert matrices as one block-diagonal CSR matrix, so all
    experts run in one sparse matmul. Keeps the dense weight for readers of single rows (routes)."""

    def __init__(self, layer: ExpertLinear) -> None:
        super().__init__()
        w = layer.masked_weight().detach()
        self.num_experts, self.out_features, self.in_features = w.shape
        self.dense_weight = w
        self.bias = layer.bias
        self.role = layer.role
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

    def gather_rows(self, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ExpertLinear.gather_rows (route units read single rows: the dense copy serves them)."""
        w = self.dense_weight.reshape(-1, self.in_features)[units]
        return w, (self.bias.reshape(-1)[units] if self.bias is not None else None)

    def forward(self, x: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        if experts is not None:  # per-pair dispatch: a few gathered experts, dense is the right kernel
            b = self.bias[experts].unsqueeze(1) if self.bias is not None else 0
            return torch.bmm(x, self.dense_weight[experts].transpose(1, 2)) + b
        e, n, d = x.shape
        out = torch.sparse.mm(self.weight_csr, x.transpose(1, 2).reshape(e * d, n).contiguous())  # (E*out, N)
        out = out.reshape(e, self.out_features, n).transpose(1, 2)
        return out + self.bias.unsqueeze(1) if self.bias is not None else out


def use_sparse_kernels(
    model: nn.Module, batch_size: int = 256, min_sparsity: float = 0.5, min_speedup: float = 1.1
) -> dict[str, bool]:
    """Replace each masked layer by its CSR version where a quick measurement at `batch_size` shows
    it faster (by `min_speedup`); layers below `min_sparsity` are not tried, nor layers only training
    uses (`train_only`: inference never runs them, so they are neither timed nor counted).
    Returns the decisions."""
    decisions: dict[str, bool] = {}
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, MaskedLinear | ExpertLinear) or layer.train_only:
            continue
        if 1 - layer.nonzero_weights() / layer.weight.numel() < min_sparsity:
            decisions[name] = False
            continue
        device = layer.weight.device
        if isinstance(layer, MaskedLinear):
            sparse, x = CSRLinear(layer), torch.randn(batch_size, layer.in_features, device=device)
        else:
            rows = max(1, batch_size // layer.num_experts)
            sparse = CSRExpertLinear(layer)
            x = torch.randn(layer.num_experts, rows, layer.in_features, device=device)
        # 15 timed calls after 5 untimed ones: enough to rank two kernels, quick at load time.
        faster = latency_ms(layer, x, repeats=15) > min_speedup * latency_ms(sparse, x, repeats=15)
        decisions[name] = faster
        if faster:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.ModuleList | nn.Sequential):
                parent[int(child)] = sparse
            else:
                setattr(parent, child, sparse)
    return decisions
