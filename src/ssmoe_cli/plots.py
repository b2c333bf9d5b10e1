"""PNG artifacts of a run: the gating map and the expert load (matplotlib, headless), and the one
`pyplot()` every plotting module of ssmoe uses."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: `ssmoe report` uses pyplot() without importing torch
    from ssmoe_cli.models.diagnostics import GateView


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def routing_plots(view: GateView | None, out_dir: Path) -> list[Path]:
    """The plots of a routed model's view (gating_map.png when the gate has a map, expert_load.png)
    in out_dir; none for a model without routing (no view)."""
    if view is None:
        return []
    paths = [gating_map(view, out_dir / "gating_map.png"), expert_load(view, out_dir / "expert_load.png")]
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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
