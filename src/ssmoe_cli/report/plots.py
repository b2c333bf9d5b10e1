"""PNG plots of `ssmoe report` (matplotlib, Agg backend): accuracy vs size with the Pareto front, expert load.

Each function returns the file it wrote, or None when no configuration has the data it needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ssmoe_cli.metrics import LOAD, PARAMS_NONZERO, TEST_ACC
from ssmoe_cli.plots import pyplot
from ssmoe_cli.report.frontier import pareto_front
from ssmoe_cli.report.records import Group

_PALETTE = ("tab:gray", "tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def colours(groups: Sequence[Group]) -> dict[str, str]:
    """One colour per model, in the order the models first appear in the table (no model is named here)."""
    out: dict[str, str] = {}
    for g in groups:
        out.setdefault(str(g.model), _PALETTE[len(out) % len(_PALETTE)])
    return out


def human_count(value: float, _pos: object = None) -> str:
    """Tick label of a parameter count on a log axis: 1-2-5 steps only, as 20k, 500k, 1.2M."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    if round(lead) not in (1, 2, 5) or abs(lead - round(lead)) > 1e-6:
        return ""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:g}{unit}"
    return f"{value:g}"


def accuracy_vs_params(groups: Sequence[Group], path: Path) -> Path | None:
    """Test accuracy vs nonzero parameters (log x): one point per configuration, std error bars, Pareto front."""
    shown = [g for g in groups if g.mean(TEST_ACC) is not None and (g.mean(PARAMS_NONZERO) or 0) > 0]
    if not shown:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    points = [(float(g.mean(PARAMS_NONZERO) or 0), 100 * float(g.mean(TEST_ACC) or 0)) for g in shown]
    colour = colours(groups)
    seen: set[str] = set()
    for g, (x, y) in zip(shown, points, strict=True):
        acc, nz = g.summary(TEST_ACC), g.summary(PARAMS_NONZERO)
        model = str(g.model)
        # Single-seed configurations get no error bar: there is no std to draw.
        ax.errorbar(
            x,
            y,
            yerr=None if acc.std is None else 100 * acc.std,
            xerr=nz.std if nz.std else None,
            fmt="o",
            ms=6,
            capsize=3,
            color=colour[model],
            label=None if model in seen else model,
        )
        seen.add(model)
        ax.annotate(g.label.split(" / ", 1)[-1], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = pareto_front(points)
    fx, fy = [points[i][0] for i in front], [points[i][1] for i in front]
    ax.step(fx, fy, where="post", color="black", lw=1, ls="--", alpha=0.6)
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.2, label="Pareto front")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(human_count))
    ax.xaxis.set_minor_formatter(FuncFormatter(human_count))
    ax.set_xlabel("nonzero parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs nonzero parameters (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def expert_load(groups: Sequence[Group], path: Path) -> Path | None:
    """Bars of experts/load_cv2 and experts/load_max_over_mean (mean ± std) for each MoE configuration."""
    shown = [g for g in groups if any(g.summary(m).n for m in LOAD)]
    if not shown:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.2 * len(shown) + 4), 5), dpi=110)
    colour = colours(groups)
    labels = [g.label for g in shown]
    titles = ("load CV² (balanced: 0)", "load max / mean (balanced: 1)")
    for ax, metric, ideal, title in zip(axes, LOAD, (0.0, 1.0), titles, strict=True):
        means = [g.mean(metric) for g in shown]
        stds = [g.summary(metric).std for g in shown]
        ax.bar(
            range(len(shown)),
            [0.0 if m is None else m for m in means],
            # NaN draws no error bar: a single seed has no std (a zero-length bar would claim one).
            yerr=[math.nan if s is None else s for s in stds],
            capsize=3,
            color=[colour[str(g.model)] for g in shown],
        )
        for i, m in enumerate(means):
            if m is None:  # say so instead of drawing a zero-height bar that reads as a value
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.axhline(ideal, color="0.4", ls=":", lw=1)
        ax.set_xticks(range(len(shown)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
    fig.suptitle("expert load per configuration (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
