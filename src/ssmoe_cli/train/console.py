"""What `ssmoe train` prints at the end: the per-layer weight table and the results summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ssmoe_cli.tracking import Tracker

# (label, MLflow metric key, format) in the order the summary shows them; absent keys are left out.
SUMMARY_ROWS = (
    ("test accuracy", "test/acc", "{:.4f}"),
    ("test loss", "test/loss", "{:.4f}"),
    ("params total", "params/total", "{:,.0f}"),
    ("params nonzero", "params/nonzero", "{:,.0f}"),
    ("params active / sample", "params/active_per_sample", "{:,.0f}"),
    ("multiply-adds / sample", "flops/per_sample", "{:,.0f}"),
    ("pruned fraction (targeted weights)", "prune/sparsity", "{:.4f}"),
    ("params compression vs baseline", "compression/ratio_vs_fcl", "{:.2f}x"),
    ("exported file (bytes)", "size/sparse_bytes", "{:,.0f}"),
    ("file compression vs baseline", "compression/bytes_ratio_vs_fcl", "{:.2f}x"),
    ("train time (s)", "time/train_s", "{:.1f}"),
    ("epoch time (s)", "time/epoch_s", "{:.2f}"),
    ("inference, batch 1 (ms)", "time/infer_ms_b1", "{:.3f}"),
    ("inference, batch 256 (ms)", "time/infer_ms_b256", "{:.3f}"),
    ("expert load CV^2", "experts/load_cv2", "{:.3f}"),
    ("expert load max / mean", "experts/load_max_over_mean", "{:.2f}"),
    ("expert output correlation", "experts/output_corr", "{:.3f}"),
    ("gate entropy (nats)", "gate/entropy", "{:.3f}"),
    ("gate t-SNE KL", "gate/tsne_kl", "{:.3f}"),
    ("gate trustworthiness T(12)", "gate/trustworthiness", "{:.4f}"),
    ("gate 1-NN accuracy", "gate/knn1_acc", "{:.4f}"),
)


def print_layer_table(rows: list[dict[str, Any]]) -> None:
    """Dense and nonzero weights per layer (masked or zero weights count as pruned)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="weights per layer (masked or zero weights count as pruned)")
    for col in ("layer", "role", "shape", "dense", "nonzero", "sparsity"):
        table.add_column(col, justify="left" if col in ("layer", "role", "shape") else "right")
    for r in rows:
        table.add_row(
            r["name"],
            r["role"],
            "x".join(map(str, r["shape"])),
            f"{r['weights']:,}",
            f"{r['nonzero']:,}",
            f"{r['sparsity']:.4f}",
        )
    Console().print(table)


def print_summary(metrics: dict[str, float], tracker: Tracker, cfg: DictConfig, baseline: str) -> None:
    """The results table, then where the run's records are. Ratios are against `baseline`."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ssmoe train: results", caption=f"baseline: {baseline} (dense)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("key", style="dim")
    for label, key, fmt in SUMMARY_ROWS:
        if key in metrics:
            table.add_row(label, fmt.format(metrics[key]), key)
    console = Console()
    console.print(table)
    console.print(f"Results: {tracker.describe()}")
    if tracker.run_id and tracker.remote:
        console.print(f"Browse: open {tracker.tracking_uri} (the tracking server's UI)")
    elif tracker.run_id:
        console.print(
            f"Browse: run `mlflow ui` in this directory (or `mlflow ui --backend-store-uri {tracker.tracking_uri}`)"
        )
    console.print(f"Outputs (config, log, checkpoint): {Path(cfg.paths.output_dir).resolve()}")
