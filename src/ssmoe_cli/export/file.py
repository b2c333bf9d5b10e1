"""The exported file: write a model as safetensors, read it back as data, rebuild it from the registry.

Format "ssmoe-sparse/1":
- every masked layer's weight (as the forward pass uses it: weight * mask) is stored either dense
  or as CSR parts of its 2-D view (rows = out, or experts x out for stacked experts):
  `<key>::values` (float), `<key>::col` and `<key>::crow` (the smallest integer dtype that fits),
  whichever is smaller; masks are not stored (a loaded layer's mask is `weight != 0`);
- every other tensor of the state dict (biases, centres, route indices...) dense;
- NOT the layers only training uses (`Masked.train_only`, e.g. SGMoE's noise network W_noise):
  inference never reads them, so the loader lets the rebuilt model keep its constructor values
  for exactly those tensors (any other missing tensor is an error). Files written before this
  rule carry them; the loader then uses the stored values;
- metadata: the format, the model's config (`_target_` tree) as JSON, which keys are CSR, the
  names of the train-only layers left out (`train_only`, JSON; informative), and
  (files written since the preprocessing was added) `preprocessing`: how raw inputs become the
  network's inputs, with the class names. Files without it load as before and take inputs already
  standardised as in training.

Format "ssmoe-sparse/2" (written only when a layer is weight-shared, `quantize=kmeans`; a file
without one is still written as /1, so older readers keep reading it): as /1, plus weight-shared
layers stored in the encoded form of ssmoe_cli.quantize.codec as one uint8 tensor
`<key>::encoded`: the codebook (float32), the codes and the relative indices (bit streams), with
their canonical Huffman code lengths when entropy coded; metadata `quantized`: per key, JSON
{shape, nonzero, index_symbols, bits, index_bits, entropy, parts (byte counts)}. A loaded shared
layer's mask is exactly its stored positions.

Loading never runs code the file chooses: safetensors holds raw tensors (no pickle), and the model
is built by ssmoe_cli.models.registry, which only calls the model, gate and topology classes ssmoe
defines with arguments of their declared types (never hydra.utils.instantiate, never an import).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ssmoe_cli.data.preprocessing import Preprocessing
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.export.kernels import quiet_csr, to_csr, use_sparse_kernels
from ssmoe_cli.models.layers import Masked, train_only_layers
from ssmoe_cli.quantize import codec

if TYPE_CHECKING:
    from ssmoe_cli.quantize import Quantized

FORMAT = "ssmoe-sparse/1"
FORMAT_QUANTIZED = "ssmoe-sparse/2"
SEP = "::"


def index_dtype(max_value: int) -> torch.dtype:
    """Smallest integer dtype safetensors can store that holds 0..max_value."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    bytes: int  # size of the file on disk, metadata included
    csr_tensors: int
    dense_tensors: int
    quantized_layers: int = 0


class Preprocessed(nn.Module):
    """An exported network behind its preprocessing: takes the dataset's raw inputs (any shape that
    flattens to the network's input size, any numeric dtype) and returns the network's output."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        self.class_names = preprocessing.class_names

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.preprocessing.apply(x))


def _masked_weights(model: nn.Module) -> dict[str, Masked]:
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Masked)}


def _train_only_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the layers only training uses (weight, bias, mask): never exported."""
    return {
        f"{name}.{key}" if name else key
        for name, layer in train_only_layers(model).items()
        for key in layer.state_dict()
    }


def _csr_parts(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    w2 = to_csr(weight.reshape(-1, weight.shape[-1]))
    values, col, crow = w2.values(), w2.col_indices(), w2.crow_indices()
    return {
        "values": values.contiguous(),
        "col": col.to(index_dtype(max(weight.shape[-1] - 1, 0))).contiguous(),
        "crow": crow.to(index_dtype(max(int(values.numel()), 0))).contiguous(),
    }


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_model(
    model: nn.Module,
    model_config: Mapping[str, Any],
    path: str | Path,
    preprocessing: Preprocessing | None = None,
    quantized: Quantized | None = None,
    entropy: str | None = None,
) -> ExportInfo:
    """Write `model` to `path` (see the module docstring). `model_config` rebuilds it (`_target_`
    tree of registered classes); `preprocessing` (the data module's) lets the file take raw inputs;
    `quantized` (KMeansQuantization.apply's result) stores its shared layers encoded, entropy coded
    as `entropy` says (default: as the quantisation was configured)."""
    from safetensors.torch import save_file

    path = Path(path)
    masked = _masked_weights(model)
    train_only = _train_only_keys(model)
    tensors: dict[str, torch.Tensor] = {}
    csr: dict[str, list[int]] = {}
    shared = {f"{name}.weight": s for name, s in quantized.layers.items()} if quantized is not None else {}
    encoded: dict[str, dict[str, object]] = {}
    for key, value in model.state_dict().items():
        owner = key[: -len(".mask")] + ".weight" if key.endswith(".mask") else None
        if owner in masked or key in train_only:
            continue  # masks are implied by the stored weights; inference never reads train-only layers
        value = value.detach().cpu()
        if key in shared:
            layer = codec.encode_shared(masked[key], shared[key], entropy or quantized.entropy)  # type: ignore[union-attr]
            tensors[f"{key}{SEP}encoded"] = torch.from_numpy(layer.blob.copy())
            encoded[key] = layer.meta
            continue
        if key in masked:
            value = masked[key].masked_weight().detach().cpu()
            parts = _csr_parts(value)
            if _nbytes(parts) < value.numel() * value.element_size():
                tensors.update({f"{key}{SEP}{part}": t for part, t in parts.items()})
                csr[key] = list(value.shape)
                continue
        tensors[key] = value.contiguous()
    metadata = {
        "format": FORMAT_QUANTIZED if encoded else FORMAT,
        "model_config": json.dumps(model_config),
        "csr": json.dumps(csr),
        "train_only": json.dumps(sorted(train_only_layers(model))),
    }
    if encoded:
        metadata["quantized"] = json.dumps(encoded, separators=(",", ":"))
    if preprocessing is not None:
        metadata["preprocessing"] = preprocessing.to_json()
    save_file(tensors, str(path), metadata=metadata)
    return ExportInfo(path, path.stat().st_size, len(csr), sum(SEP not in k for k in tensors), len(encoded))


@dataclass(frozen=True)
class ExportFile:
    """An exported file's parts, as read (nothing built yet)."""

    model_config: Any
    csr: dict[str, list[int]]
    preprocessing: Preprocessing | None
    tensors: dict[str, torch.Tensor]
    train_only: list[str]  # layers left out as training-only (none in files written before the rule)
    quantized: dict[str, dict[str, Any]] = field(default_factory=dict)  # weight-shared layers (format /2)

    @property
    def format(self) -> str:
        return FORMAT_QUANTIZED if self.quantized else FORMAT


def read_export(path: str | Path) -> ExportFile:
    """Read and parse an exported file; anything malformed is one SsmoeError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (OSError, SafetensorError) as exc:
        raise SsmoeError(f"cannot read the exported model {path}: {exc}") from None
    if metadata.get("format") not in (FORMAT, FORMAT_QUANTIZED):
        found, known = metadata.get("format"), f"{FORMAT} or {FORMAT_QUANTIZED}"
        raise SsmoeError(f"{path} is not an ssmoe export (format {found!r}, expected {known})")
    try:
        config, csr = json.loads(metadata["model_config"]), json.loads(metadata["csr"])
        train_only = json.loads(metadata.get("train_only", "[]"))
        quantized = json.loads(metadata.get("quantized", "{}"))
    except (KeyError, ValueError) as exc:
        raise SsmoeError(f"{path}: damaged metadata ({exc})") from None
    if not (isinstance(quantized, dict) and all(isinstance(m, dict) for m in quantized.values())):
        raise SsmoeError(f"{path}: damaged metadata (quantized)")
    for key, meta in quantized.items():
        try:
            codec.check_meta(meta)
        except ValueError as exc:
            raise SsmoeError(f"{path}: weight-shared layer {key} is damaged ({exc})") from None
    if not (isinstance(csr, dict) and all(_shape(s) for s in csr.values())):
        raise SsmoeError(f"{path}: damaged metadata (csr)")
    if not (isinstance(train_only, list) and all(isinstance(name, str) for name in train_only)):
        raise SsmoeError(f"{path}: damaged metadata (train_only)")
    raw = metadata.get("preprocessing")
    preprocessing = Preprocessing.from_json(raw) if raw is not None else None
    return ExportFile(config, csr, preprocessing, tensors, train_only, quantized)


def _first_error(exc: Exception) -> str:
    """One line saying what is wrong: load_state_dict's message starts with a header line
    ("Error(s) in loading state_dict for X:") and lists the errors on the next ones."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _decode_shared(
    path: Path, key: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight-shared layer's (weight, mask), its parts popped from `tensors`; damage is one SsmoeError."""
    try:
        return codec.decode_shared(key, meta, tensors, SEP)
    except KeyError as exc:
        raise SsmoeError(f"{path}: weight-shared layer {key} lacks its part {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SsmoeError(f"{path}: weight-shared layer {key} is damaged ({exc})") from None


def load_model(path: str | Path, sparse_kernels: bool = True, trusted: Iterable[type] = ()) -> nn.Module:
    """Rebuild an exported model in eval mode; with `sparse_kernels`, swap in CSR layers where faster.

    The file's config may only build the classes of ssmoe_cli.models.registry, plus the class
    objects in `trusted` (e.g. your own gate class, imported by you), matched by exact name. A file
    with preprocessing loads as a `Preprocessed` model that takes the dataset's raw inputs."""
    from ssmoe_cli.models.registry import build

    path = Path(path)
    exported = read_export(path)
    try:
        model = build(exported.model_config, trusted, where="model_config")
    except SsmoeError as exc:
        raise SsmoeError(f"refusing to load {path}: {exc}") from None
    tensors = dict(exported.tensors)
    state = {}
    try:
        for key, shape in exported.csr.items():
            values, col, crow = (tensors.pop(f"{key}{SEP}{p}") for p in ("values", "col", "crow"))
            rows = int(torch.tensor(shape[:-1]).prod())
            # Invariants checked: a crafted file cannot make the kernel read out of bounds.
            with quiet_csr():
                csr = torch.sparse_csr_tensor(
                    crow.long(), col.long(), values, size=(rows, shape[-1]), check_invariants=True
                )
            state[key] = csr.to_dense().reshape(shape)
        shared = {key: _decode_shared(path, key, meta, tensors) for key, meta in exported.quantized.items()}
        state.update({key: weight for key, (weight, _) in shared.items()})
        state.update(tensors)
        for key in _masked_weights(model):
            if key in state:  # a missing weight is reported by load_state_dict below
                state[key[: -len(".weight")] + ".mask"] = state[key] != 0
        # A shared layer's mask is its stored positions (a centroid may be exactly zero).
        state.update({key[: -len(".weight")] + ".mask": mask for key, (_, mask) in shared.items()})
        # Train-only tensors are not in the file: the rebuilt model keeps its constructor values for
        # exactly those (inference never reads them); any other missing key fails the strict load.
        own = model.state_dict()
        for key in _train_only_keys(model):
            state.setdefault(key, own[key])
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:  # missing parts, bad CSR, shapes that do not match
        raise SsmoeError(f"{path}: its tensors do not fit its model config ({_first_error(exc)})") from None
    model.eval()
    if sparse_kernels:
        use_sparse_kernels(model)
    return Preprocessed(model, exported.preprocessing).eval() if exported.preprocessing else model
