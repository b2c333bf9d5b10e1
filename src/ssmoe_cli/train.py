"""`ssmoe train`: the Hydra app. Compose conf/ -> build data, model, callbacks, logger -> fit and
test with Lightning -> accounting and timing -> one MLflow run (params, metrics, tags, artifacts).

Only this module and ssmoe_cli.cli know about Hydra; the pieces it builds are plain objects.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import ssmoe_cli
from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)
CONFIG_PATH = "pkg://ssmoe_cli.conf"


def quiet_third_party() -> None:
    """Drop third-party chatter that says nothing about the run (ads, deprecations inside libraries)."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")

    class _NoAds(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAds())


def main(args: list[str]) -> int:
    """Run the Hydra app on the given overrides (the `ssmoe train` subcommand)."""
    quiet_third_party()
    # Hydra parses sys.argv itself: hand it the overrides without the subcommand word.
    sys.argv = [sys.argv[0], *args]
    hydra_app()
    return 0


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    try:
        return train(cfg).get("test/acc")
    except SsmoeError as exc:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        print(f"ssmoe: error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(exc.exit_code)


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that make runs easy to filter: chosen options, versions, sweep, commit."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    choices = hc.runtime.choices
    tags = {
        "model": str(choices.get("model")),
        "prune": str(choices.get("prune", "none")),
        "data": str(choices.get("data")),
        "baseline": str(choices.get("baseline")),
        "seed": str(cfg.seed),
        "ssmoe_version": ssmoe_cli.__version__,
        "output_dir": hc.runtime.output_dir,
    }
    for group in ("gating", "topology", "experiment"):
        if choices.get(group):
            tags[group] = str(choices[group])
    if hc.mode == RunMode.MULTIRUN:
        tags["sweep_id"] = Path(hc.sweep.dir).name
        tags["sweep_dir"] = str(Path(hc.sweep.dir).resolve())
        tags["job_num"] = str(hc.job.num)
    commit = git_commit()
    if commit:
        tags["git_commit"] = tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit() -> str | None:
    """Commit of the ssmoe source checkout, when the package runs from one."""
    src = Path(ssmoe_cli.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate one configuration; returns the final metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    baseline = instantiate(cfg.baseline)
    tracker = instantiate(cfg.logger)
    config = OmegaConf.to_container(cfg, resolve=True)
    tags = run_tags(cfg)
    run_name = f"{tags['model']}-{tags['data']}-s{cfg.seed}"
    tracker.start(config, tags, run_name=run_name)
    try:
        metrics = fit_and_evaluate(cfg, datamodule, model, baseline, tracker)
    except BaseException as exc:
        # Ctrl-C and kills that Python sees end the run KILLED; anything else FAILED, with the reason.
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tracker.end(status, error=f"{type(exc).__name__}: {exc}")
        raise
    tracker.end("FINISHED")
    print_summary(metrics, tracker, cfg, baseline=tags["baseline"])
    return metrics


def fit_and_evaluate(cfg: DictConfig, datamodule: Any, model: Any, baseline: Any, tracker: Any) -> dict[str, float]:
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    from ssmoe_cli.accounting import account, latency_ms, nonzero_params
    from ssmoe_cli.callbacks import EpochTimer
    from ssmoe_cli.module import ClassifierModule

    datamodule.setup("fit")
    module = ClassifierModule(model, num_classes=cfg.data.num_classes, optimizer=instantiate(cfg.optim))
    timer = EpochTimer()
    callbacks: list[Any] = [timer]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(instantiate(cb_cfg))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress-bar callback when the bar is switched off.
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=tracker.lightning_logger())

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_s = time.perf_counter() - start
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]

    device = next(model.parameters()).device
    x_test = datamodule.test_set.tensors[0].to(device)
    acc = account(model, x_test)
    extra = {
        **acc.metrics(),
        "compression/ratio_vs_fcl": nonzero_params(baseline) / max(acc.params_nonzero, 1),
        "time/train_s": train_s,
        "time/epoch_s": timer.mean,
        "time/infer_ms_b1": latency_ms(model, x_test[:1], repeats=cfg.timing.repeats_b1),
        "time/infer_ms_b256": latency_ms(model, x_test[:256], repeats=cfg.timing.repeats_b256),
    }
    tracker.log_metrics(extra, step=trainer.global_step)
    return {**{k: float(v) for k, v in results.items()}, **extra}


def print_summary(metrics: dict[str, float], tracker: Any, cfg: DictConfig, baseline: str) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [
        ("test accuracy", "test/acc", "{:.4f}"),
        ("test loss", "test/loss", "{:.4f}"),
        ("params total", "params/total", "{:,.0f}"),
        ("params nonzero", "params/nonzero", "{:,.0f}"),
        ("params active / sample", "params/active_per_sample", "{:,.0f}"),
        ("multiply-adds / sample", "flops/per_sample", "{:,.0f}"),
        (f"compression vs {baseline}", "compression/ratio_vs_fcl", "{:.2f}x"),
        ("train time (s)", "time/train_s", "{:.1f}"),
        ("epoch time (s)", "time/epoch_s", "{:.2f}"),
        ("inference, batch 1 (ms)", "time/infer_ms_b1", "{:.3f}"),
        ("inference, batch 256 (ms)", "time/infer_ms_b256", "{:.3f}"),
    ]
    table = Table(title="ssmoe train: results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("key", style="dim")
    for label, key, fmt in rows:
        if key in metrics:
            table.add_row(label, fmt.format(metrics[key]), key)
    console = Console()
    console.print(table)
    console.print(f"Results: {tracker.describe()}")
    if tracker.run_id:
        console.print(
            f"Browse: run `mlflow ui` in this directory (or `mlflow ui --backend-store-uri {tracker.tracking_uri}`)"
        )
    console.print(f"Outputs (config, log, checkpoint): {Path(cfg.paths.output_dir).resolve()}")
