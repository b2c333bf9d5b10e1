"""What `ssmoe train` prints at the end: the per-layer weight table and the results summary."""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ssmoe_cli import metrics as m
from ssmoe_cli.tracking import Tracker


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
    for key in m.SUMMARY:  # labels, formats and order: ssmoe_cli.metrics
        if key in metrics:
            table.add_row(m.get(key).label, m.get(key).format(metrics[key]), key)
    console = Console()
    console.print(table)
    # soft_wrap: these lines hold paths and a command to copy; rich must not break them at the width.
    say = functools.partial(console.print, soft_wrap=True, highlight=False)
    say(f"Results: {tracker.describe()}")
    if tracker.run_id and tracker.remote:
        say(f"Browse: open {tracker.tracking_uri} (the tracking server's UI)")
    elif tracker.run_id:
        uri = shlex.quote(str(tracker.tracking_uri))  # a path with spaces still pastes as one argument
        say(f"Browse: run `mlflow ui` in this directory (or `mlflow ui --backend-store-uri {uri}`)")
    say(f"Outputs (config, log, checkpoint): {Path(cfg.paths.output_dir).resolve()}")
