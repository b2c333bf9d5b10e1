"""PNG artifacts of a run: the gating map and the expert load (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from ssmoe_cli.evaluation import GateView


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gating_map(view: GateView, path: Path, title: str = "") -> Path | None:
    """Test points in the gate's 2-D map coloured by class, expert centres, and their links."""
    if view.embedding is None:
        return None
    plt = _pyplot()
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
    plt = _pyplot()
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
