"""PNG artifacts of a run: the gating map, the expert load and the per-class routing (matplotlib,
headless), each table plot next to its data as CSV, and the one `pyplot()` every plotting module of
ssmoe uses."""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only a type here: `ssmoe report` uses pyplot() without importing torch
    from ssmoe_cli.models.diagnostics import GateView


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def routing_plots(view: GateView | None, out_dir: Path) -> list[Path]:
    """The plots of a routed model's view in out_dir, with their data: gating_map.png when the gate
    has a map; expert_load.png and expert_utilisation.csv (per expert: samples routed, share of
    assignments and of gate mass); routing_by_class.png and .csv (rows classes, columns experts:
    each class's gate mass). None for a model without routing (no view)."""
    if view is None:
        return []
    paths = [gating_map(view, out_dir / "gating_map.png"), expert_load(view, out_dir / "expert_load.png")]
    paths += [expert_table(view, out_dir / "expert_utilisation.csv")]
    paths += [
        class_routing(view, out_dir / "routing_by_class.png"),
        class_table(view, out_dir / "routing_by_class.csv"),
    ]
    return [p for p in paths if p is not None]


def gating_map(view: GateView, path: Path, title: str = "") -> Path | None:
    """Test points in the gate's 2-D map coloured by class, expert centres, and their links."""
    if view.embedding is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    pts = ax.scatter(view.embedding[:, 0], view.embedding[:, 1], c=view.labels, cmap="tab10", s=4, alpha=0.6)
    if view.centres is not None:
        c = view.centres
        if view.sources is not None:
            for b, row in enumerate(view.sources.tolist()):
                for a in row:
                    if a >= 0:
                        ax.annotate(
                            "",
                            xy=c[b].tolist(),
                            xytext=c[a].tolist(),
                            arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 0.8},
                        )
        ax.scatter(c[:, 0], c[:, 1], marker="X", s=90, c="black", edgecolors="white", linewidths=0.8)
        for e, (cx, cy) in enumerate(c.tolist()):
            ax.text(cx, cy, f" {e}", fontsize=8, weight="bold")
    fig.colorbar(pts, ax=ax, label="class")
    ax.set_title(title or "gating map: test points by class, expert centres (X), routes")
    return _save(plt, fig, path)


def expert_load(view: GateView, path: Path, title: str = "") -> Path:
    """Bar chart of the fraction of test assignments each expert receives."""
    plt = pyplot()
    n = len(view.load)
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * n + 2), 3.5), dpi=110)
    ax.bar(range(n), view.load.tolist(), color="tab:blue")
    ax.axhline(1 / n, color="tab:red", ls="--", lw=1, label="uniform")
    ax.set_xlabel("expert")
    ax.set_ylabel("fraction of test assignments")
    ax.set_title(title or "expert load")
    ax.legend()
    return _save(plt, fig, path)


def expert_table(view: GateView, path: Path) -> Path | None:
    """Per expert: the fraction of test samples routed to it, its share of the (sample, expert)
    assignments and its share of the gate mass; None without them (a view built by hand)."""
    if view.samples is None or view.mass is None:
        return None
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["expert", "sample_fraction", "assignment_share", "gate_mass_share"])
        rows = zip(view.samples.tolist(), view.load.tolist(), view.mass.tolist(), strict=True)
        writer.writerows([e, *(f"{v:.6f}" for v in row)] for e, row in enumerate(rows))
    return path


def class_table(view: GateView, path: Path) -> Path | None:
    """Rows classes, columns experts: the fraction of each class's gate mass each expert gets (rows
    sum to 1), after the class's number of test samples; None without a per-class view."""
    if view.by_class is None or view.class_counts is None:
        return None
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "samples", *(f"expert_{e}" for e in range(view.by_class.shape[1]))])
        for c, (row, n) in enumerate(zip(view.by_class.tolist(), view.class_counts.tolist(), strict=True)):
            writer.writerow([c, n, *(f"{v:.6f}" for v in row)])
    return path


def class_routing(view: GateView, path: Path, title: str = "") -> Path | None:
    """Heatmap of the per-class routing: which experts each class's gate mass goes to."""
    if view.by_class is None:
        return None
    plt = pyplot()
    table = view.by_class.float()
    n_cls, n_exp = table.shape
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * n_exp + 2.5), max(3.5, 0.35 * n_cls + 1.5)), dpi=110)
    img = ax.imshow(table.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    if n_cls * n_exp <= 400:  # the numbers stay legible up to about a 20 x 20 table
        for c in range(n_cls):
            for e in range(n_exp):
                v = float(table[c, e])
                ax.text(e, c, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    ax.set_xticks(range(n_exp))
    ax.set_yticks(range(n_cls))
    ax.set_xlabel("expert")
    ax.set_ylabel("class (test samples)")
    fig.colorbar(img, ax=ax, label="fraction of the class's gate mass")
    ax.set_title(title or "routing by class")
    return _save(plt, fig, path)


def _save(plt: ModuleType, fig: Any, path: Path) -> Path:
    """Lay out, write and close a figure (closed: a long sweep must not keep figures alive)."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
