"""Trade-off plots: test accuracy against each cost (nonzero, active/sample, MACs/sample, latency at batch 1).

One figure per cost on a log x-axis; every series is a line (colour: its model, line style: its prune
method) with its 95% interval over seeds as a band; the Pareto frontier, chosen on validation accuracy,
is circled at its points' test accuracy; the dense reference's test accuracy is a dotted line.
"""

from __future__ import annotations

from pathlib import Path

from ssmoe_cli.metrics import FLOPS, INFER_MS_B1, PARAMS_ACTIVE, PARAMS_NONZERO, TEST_ACC, get
from ssmoe_cli.plots import pyplot
from ssmoe_cli.report.frontier_analysis import Tradeoff
from ssmoe_cli.report.plots import colours, human_count

FILES = {
    PARAMS_NONZERO: "tradeoff_nonzero.png",
    PARAMS_ACTIVE: "tradeoff_active.png",
    FLOPS: "tradeoff_flops.png",
    INFER_MS_B1: "tradeoff_latency_b1.png",
}
AXIS = {
    PARAMS_NONZERO: "nonzero parameters",
    PARAMS_ACTIVE: "active parameters per sample",
    FLOPS: "multiply-adds per sample",
    INFER_MS_B1: "inference latency, batch 1 (ms)",
}
_STYLES = ("-", "--", "-.", ":")


def tradeoff_plot(t: Tradeoff, x: str, path: Path, title: str = "") -> Path | None:
    """Test accuracy vs `x` for every series of `t`; None when no configuration has both."""
    lines = [(s, s.curve(x, TEST_ACC)) for s in t.series]
    lines = [(s, pts) for s, pts in lines if pts]
    if not lines:
        return None
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(8.5, 5.5), dpi=110)
    colour = colours([p.group for s, _ in lines for p in s.points])
    styles: dict[str, str] = {}
    for s, pts in lines:
        style = styles.setdefault(str(s.prune), _STYLES[len(styles) % len(_STYLES)])
        xs = [p.x(x) or 0.0 for p in pts]
        acc = [p.summary(TEST_ACC) for p in pts]
        ys = [100 * (a.mean or 0.0) for a in acc]
        c = colour[str(s.model)]
        ax.plot(xs, ys, ls=style, marker="o", ms=4, color=c, label=s.label)
        banded = [(xv, a) for xv, a in zip(xs, acc, strict=True) if a.ci_low is not None and a.ci_high is not None]
        if len(banded) >= 2:  # a band needs two ends; a single seed has no interval to draw
            bx = [b[0] for b in banded]
            ax.fill_between(
                bx, [100 * b[1].ci_low for b in banded], [100 * b[1].ci_high for b in banded], color=c, alpha=0.15, lw=0
            )
    front = [p for p in t.frontier.get(x, []) if p.summary(TEST_ACC).mean is not None]
    if front:
        fx = [p.x(x) or 0.0 for p in front]
        fy = [100 * (p.summary(TEST_ACC).mean or 0.0) for p in front]
        ax.scatter(
            fx,
            fy,
            s=150,
            facecolors="none",
            edgecolors="black",
            linewidths=1.2,
            zorder=5,
            label="Pareto frontier (chosen on val acc)",
        )
    ref = t.reference.summary(TEST_ACC).mean if t.reference is not None else None
    if ref is not None:
        ax.axhline(100 * ref, color="0.4", ls=":", lw=1, label="dense reference (test)")
    ax.set_xscale("log")
    if get(x).kind == "count":
        ax.xaxis.set_major_formatter(FuncFormatter(human_count))
        ax.xaxis.set_minor_formatter(FuncFormatter(human_count))
    ax.set_xlabel(f"{AXIS[x]} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"test accuracy vs {AXIS[x]} (mean, 95% CI over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def tradeoff_plots(t: Tradeoff, out_dir: Path, suffix: str = "", context: str = "") -> list[Path]:
    """The four figures of one context in out_dir (file names: FILES, with `suffix` before .png)."""
    written = []
    for x, name in FILES.items():
        path = out_dir / name.replace(".png", f"{suffix}.png")
        title = f"test accuracy vs {AXIS[x]}" + (f" ({context})" if context else "") + " — mean, 95% CI over seeds"
        if tradeoff_plot(t, x, path, title) is not None:
            written.append(path)
    return written
