"""What `ssmoe train` measures once the model is trained and tested: parameter and FLOP accounting,
the per-layer weight table, the exported model (written, reloaded from weights only, CSR kernels where
they measure faster) and its latency (with kernels.json: the kernel of each layer and the dispatch of
each mixture at the timed batch sizes, exactly what was timed), and, for a routed model (a mixture of
experts), routing metrics and plots."""

from __future__ import annotations

import csv
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssmoe_cli import metrics as names
from ssmoe_cli.tracking import Tracker


def measure(
    cfg: DictConfig,
    model: Any,
    baseline: Any,
    datamodule: Any,
    tracker: Tracker,
    pruner: Any,
    train_s: float,
    epoch_s: float,
    quantized: Any = None,
) -> dict[str, float]:
    """Metrics of the trained model (logged by the caller); artifacts go to the run as they are written.
    `quantized`: the quantize stage's result (ssmoe_cli.quantize.Quantized), None without one."""
    from ssmoe_cli.data.base import TensorDataModule
    from ssmoe_cli.export import dispatch_choices, export_model, kernels, load_model, use_sparse_kernels
    from ssmoe_cli.models.accounting import account, nonzero_params
    from ssmoe_cli.models.diagnostics import routing_metrics
    from ssmoe_cli.models.registry import classes_of
    from ssmoe_cli.plots import routing_plots
    from ssmoe_cli.prune.masks import layer_table
    from ssmoe_cli.timing import latency_ms
    from ssmoe_cli.train.console import print_layer_table

    device = next(model.parameters()).device
    x_train, y_train = (t.to(device) for t in datamodule.train_set.tensors)
    x_test, y_test = (t.to(device) for t in datamodule.test_set.tensors)
    out_dir = Path(cfg.paths.output_dir)
    acc = account(model, x_test)
    extra = {
        **acc.metrics(),
        names.PRUNE_SPARSITY: pruner.final_sparsity(model),
        names.RATIO_VS_FCL: nonzero_params(baseline) / max(acc.params_nonzero, 1),
        names.TRAIN_S: train_s,
        names.EPOCH_S: epoch_s,
    }
    layers = layer_table(model)
    write_layer_csv(layers, out_dir / "layers.csv")
    tracker.log_artifact(out_dir / "layers.csv")
    print_layer_table(layers)

    # The model as exported: a compact sparse file, reloaded from weights only, run with CSR kernels
    # where they measure faster; the latencies are those of this exported model.
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    # The file carries the data module's preprocessing: loaded, it takes the dataset's raw inputs.
    preprocessing = datamodule.preprocessing if isinstance(datamodule, TensorDataModule) else None
    export = export_model(model, model_config, out_dir / "model.safetensors", preprocessing, quantized)
    tracker.log_artifact(export.path)
    extra.update(file_stages(model, model_config, preprocessing, quantized, export.bytes, acc.params_total))
    dense_bytes = sum(p.numel() * p.element_size() for p in baseline.parameters())
    # The classes of this run's own config (maybe the user's, from --config-dir) are trusted as the
    # class objects this job built, never as names read back from the file (docs/security.md).
    exported = load_model(export.path, sparse_kernels=False, trusted=classes_of(model, model_config))
    exported = exported.to(device)
    csr = use_sparse_kernels(exported, inputs=x_test[:256])  # layer choices, then checked on the model
    # What the timed model runs: each layer's kernel and each mixture's dispatch at the timed batches.
    record = {"layers": kernels(exported), "dispatch": dispatch_choices(exported, (1, 256))}
    tracker.log_text(json.dumps(record, indent=2), "kernels.json")
    extra.update(
        {
            names.DENSE_BYTES: float(dense_bytes),
            names.SPARSE_BYTES: float(export.bytes),
            names.BYTES_RATIO_VS_FCL: dense_bytes / export.bytes,
            names.CSR_LAYERS: float(sum(csr.values())),
            names.INFER_MS_B1: latency_ms(exported, x_test[:1], repeats=cfg.timing.repeats_b1),
            names.INFER_MS_B256: latency_ms(exported, x_test[:256], repeats=cfg.timing.repeats_b256),
        }
    )
    # Routing metrics and plots of a routed model (a mixture of experts); none for any other.
    gate_metrics, view = routing_metrics(model, x_train, y_train, x_test, y_test, seed=cfg.seed)
    extra.update(gate_metrics)
    for path in routing_plots(view, out_dir):
        tracker.log_artifact(path, "plots")
    return extra


def file_stages(
    model: Any, model_config: Any, preprocessing: Any, quantized: Any, file_bytes: int, params_total: int
) -> dict[str, float]:
    """Bytes on disk stage by stage (Deep Compression's table): the model as dense float32, its file
    with float32 CSR weights, and, for a quantised model, the file with shared weights and packed
    codes and indices, then with both streams Huffman coded. Every file includes its metadata."""
    from ssmoe_cli.export import export_model

    sizes = {names.MODEL_F32_BYTES: float(4 * params_total), names.CSR_BYTES: float(file_bytes)}
    if quantized is None:
        return sizes
    with tempfile.TemporaryDirectory(prefix="ssmoe-stages-") as tmp:
        write = functools.partial(export_model, model, model_config, preprocessing=preprocessing)
        sizes[names.CSR_BYTES] = float(write(Path(tmp) / "csr.safetensors").bytes)
        for name, entropy in ((names.QUANTIZED_BYTES, "none"), (names.ENTROPY_BYTES, "huffman")):
            same = entropy == quantized.entropy  # the run's own file is this stage
            path = Path(tmp) / f"{entropy}.safetensors"
            sizes[name] = float(file_bytes if same else write(path, quantized=quantized, entropy=entropy).bytes)
    sizes.update(quantized.metrics)
    return sizes


def write_layer_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The per-layer weight table as CSV (one row per layer)."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
