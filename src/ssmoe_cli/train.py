"""`ssmoe train`: the Hydra app. Compose conf/ -> build data, model, callbacks, logger -> fit and
test with Lightning -> accounting and timing -> one MLflow run (params, metrics, tags, artifacts).

Only this module and ssmoe_cli.cli know about Hydra; the pieces it builds are plain objects.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import ssmoe_cli
from ssmoe_cli.errors import SsmoeError

log = logging.getLogger(__name__)
CONFIG_PATH = "pkg://ssmoe_cli.conf"
FAILED_MARKER = "FAILED"  # written into a failed sweep job's output directory


class _NoAds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_ADS = _NoAds()


def quiet_third_party() -> None:
    """Drop third-party chatter that says nothing about the run (ads, deprecations inside libraries).
    Idempotent: sweeps call it once per job."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_ADS)  # a no-op when present


def main(args: list[str]) -> int:
    """Run the Hydra app on the given overrides (the `ssmoe train` subcommand)."""
    from ssmoe_cli.cli import SUBCOMMAND_ENV

    quiet_third_party()
    # Hydra parses sys.argv itself: hand it the overrides without the subcommand word. DDP workers
    # re-run that command line; the environment tells the CLI it is `train` again.
    sys.argv = [sys.argv[0], *args]
    os.environ[SUBCOMMAND_ENV] = "train"
    hydra_app()
    return 0


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return train(cfg).get("test/acc")
    except Exception as exc:
        if isinstance(exc, SsmoeError | InstantiationException):
            # A constructor's ValueError is a config mistake: show its message, not Hydra's wrapper.
            cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
            lines = str(cause).splitlines() or [type(cause).__name__]
        elif multirun:
            log.exception("job failed")  # the traceback goes to the job's log file
            lines = [f"{type(exc).__name__}: {exc}"]
        else:
            raise  # a bug, not a user error: keep the traceback
        for line in lines:  # one line per problem
            print(f"ssmoe: error: {line}", file=sys.stderr)
        if not multirun:
            sys.exit(SsmoeError.exit_code)
        # In a sweep one failed job must not stop the others: leave a marker that the sweep summary
        # (hydra_callbacks.SweepSummary) reports, and return.
        (Path(HydraConfig.get().runtime.output_dir) / FAILED_MARKER).write_text(" / ".join(lines) + "\n")
        return None


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that make runs easy to filter: chosen options, versions, sweep, commit."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    choices = hc.runtime.choices
    tags = {
        "run_type": "train",  # `ssmoe report` logs runs of type "report" into the same experiments
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
    quiet_third_party()  # again: launcher plugins (joblib) run jobs in fresh worker processes
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate

    from ssmoe_cli.tracking import NullTracker, config_hash
    from ssmoe_cli.validation import validate

    config = OmegaConf.to_container(cfg, resolve=True)
    problems = validate(config, gpu_available=torch.cuda.is_available)
    if problems:  # before any work: nothing is created, nothing is logged
        raise SsmoeError("\n".join(problems))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    baseline = instantiate(cfg.baseline)
    # DDP worker processes (launched by rank 0 with LOCAL_RANK / NODE_RANK set) train but do not
    # track: the run is rank 0's, so a multi-process job is still exactly one MLflow run.
    worker = int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0
    tracker = NullTracker() if worker else instantiate(cfg.logger)
    tags = {**run_tags(cfg), "config_hash": config_hash(config)}
    if cfg.get("skip_finished"):
        done = tracker.find_finished(tags["config_hash"])
        if done is not None:
            log.info("skip_finished: run %s already FINISHED with this config; not training again", done[0])
            print(f"ssmoe: skipped, already finished as MLflow run {done[0]} (skip_finished=true)")
            return done[1]
    ckpt = resolve_checkpoint(cfg.get("ckpt_path"), tracker, tags["config_hash"])
    if ckpt is not None and ckpt.run_id:
        tracker.resume(ckpt.run_id)
        log.info("resuming MLflow run %s from %s", ckpt.run_id, ckpt.path)
    else:
        tracker.start(config, tags, run_name=f"{tags['model']}-{tags['data']}-s{cfg.seed}")
    try:
        metrics = fit_and_evaluate(cfg, datamodule, model, baseline, tracker, ckpt.path if ckpt else None)
    except BaseException as exc:
        # Ctrl-C ends the run KILLED (Lightning turns it into exit(1) after its graceful shutdown);
        # anything else FAILED, with the reason.
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        if getattr(exc, "step", None) is not None:
            tracker.set_tags({"failed_step": str(exc.step)})
        tracker.end(status, error=f"{type(exc).__name__}: {exc}")
        warn_offline(tracker)
        raise
    tracker.end("FINISHED")
    if not worker:
        print_summary(metrics, tracker, cfg, baseline=tags["baseline"])
    warn_offline(tracker)
    return metrics


def warn_offline(tracker: Any) -> None:
    """The tracking server was lost mid-run: say where the records are and how to re-log them."""
    note = tracker.offline_note()
    if note:
        print(f"ssmoe: warning: {note}", file=sys.stderr)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    run_id: str | None  # the MLflow run it belongs to, if known


def resolve_checkpoint(ckpt_path: str | None, tracker: Any, config_hash: str) -> Checkpoint | None:
    """`ckpt_path=last`: the newest unfinished run of this very config that left checkpoints/last.ckpt;
    a path: that checkpoint (and the run whose output directory holds it, if any)."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        for run_id, out_dir in tracker.find_unfinished(config_hash):
            path = Path(out_dir) / "checkpoints" / "last.ckpt"
            if out_dir and path.is_file():
                return Checkpoint(path, run_id)
        raise SsmoeError(
            "ckpt_path=last: no unfinished run of this config left a checkpoint in this experiment; "
            "run without ckpt_path, or give ckpt_path=PATH/TO/last.ckpt"
        )
    path = Path(ckpt_path).expanduser().resolve()
    if not path.is_file():
        raise SsmoeError(f"ckpt_path={ckpt_path}: no such file; give a checkpoint file or ckpt_path=last")
    owner = next((run for run, out in tracker.find_unfinished(config_hash) if out and path.is_relative_to(out)), None)
    return Checkpoint(path, owner)


def fit_and_evaluate(
    cfg: DictConfig, datamodule: Any, model: Any, baseline: Any, tracker: Any, ckpt_path: Path | None = None
) -> dict[str, float]:
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    from ssmoe_cli.accounting import account, latency_ms, nonzero_params
    from ssmoe_cli.callbacks import EpochTimer, FiniteLossGuard, RngState
    from ssmoe_cli.evaluation import moe_metrics
    from ssmoe_cli.export import config_targets, export_model, load_model, use_sparse_kernels
    from ssmoe_cli.models.moe import MixtureOfExperts
    from ssmoe_cli.module import ClassifierModule
    from ssmoe_cli.plots import expert_load, gating_map
    from ssmoe_cli.prune.base import layer_table

    datamodule.setup("fit")
    # scheduler=none composes to an empty node: a constant learning rate.
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = ClassifierModule(
        model, num_classes=cfg.data.num_classes, optimizer=instantiate(cfg.optim), scheduler=scheduler
    )
    timer = EpochTimer()
    pruner = instantiate(cfg.prune)
    callbacks: list[Any] = [timer, pruner, FiniteLossGuard(), RngState()]
    for cb_cfg in (cfg.get("callbacks") or {}).values():
        if cb_cfg is not None and "_target_" in cb_cfg:
            callbacks.append(instantiate(cb_cfg))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress-bar callback when the bar is switched off.
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=tracker.lightning_logger())

    start = time.perf_counter()
    prepare = getattr(model, "prepare", None)
    if callable(prepare):
        # Fit-independent preparation on training inputs (e.g. t-SNE gate pretraining), counted
        # as training time, on the device the trainer will use.
        device = trainer.strategy.root_device
        model.to(device)
        generator = torch.Generator().manual_seed(cfg.seed)
        log.info("preparing the model on %d training examples", len(datamodule.train_set))
        prepare(datamodule.train_set.tensors[0].to(device), generator)
    # weights_only: a checkpoint file is loaded as tensors and plain containers, never unpickled code.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_s = time.perf_counter() - start
    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:
        return {k: float(v) for k, v in results.items()}  # accounting, export and plots are rank 0's

    device = next(model.parameters()).device
    x_train, y_train = (t.to(device) for t in datamodule.train_set.tensors)
    x_test, y_test = (t.to(device) for t in datamodule.test_set.tensors)
    out_dir = Path(cfg.paths.output_dir)
    acc = account(model, x_test)
    extra = {
        **acc.metrics(),
        "prune/sparsity": pruner.final_sparsity(model),
        "compression/ratio_vs_fcl": nonzero_params(baseline) / max(acc.params_nonzero, 1),
        "time/train_s": train_s,
        "time/epoch_s": timer.mean,
    }
    layers = layer_table(model)
    write_layer_csv(layers, out_dir / "layers.csv")
    tracker.log_artifact(out_dir / "layers.csv")
    print_layer_table(layers)

    # The model as exported: a compact sparse file, reloaded from weights only, run with CSR kernels
    # where they measure faster; the latencies are those of this exported model.
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    export = export_model(model, model_config, out_dir / "model.safetensors")
    tracker.log_artifact(export.path)
    dense_bytes = sum(p.numel() * p.element_size() for p in baseline.parameters())
    # The classes of this run's own config are trusted (they may be the user's, outside ssmoe_cli).
    exported = load_model(export.path, sparse_kernels=False, trusted_targets=config_targets(model_config))
    exported = exported.to(device)
    kernels = use_sparse_kernels(exported)
    extra.update(
        {
            "size/dense_bytes": float(dense_bytes),
            "size/sparse_bytes": float(export.bytes),
            "compression/bytes_ratio_vs_fcl": dense_bytes / export.bytes,
            "inference/csr_layers": float(sum(kernels.values())),
            "time/infer_ms_b1": latency_ms(exported, x_test[:1], repeats=cfg.timing.repeats_b1),
            "time/infer_ms_b256": latency_ms(exported, x_test[:256], repeats=cfg.timing.repeats_b256),
        }
    )
    if isinstance(model, MixtureOfExperts):
        gate_metrics, view = moe_metrics(model, x_train, y_train, x_test, y_test, seed=cfg.seed)
        extra.update(gate_metrics)
        for path in (gating_map(view, out_dir / "gating_map.png"), expert_load(view, out_dir / "expert_load.png")):
            if path is not None:
                tracker.log_artifact(path, "plots")
    tracker.log_metrics(extra, step=trainer.global_step)
    return {**{k: float(v) for k, v in results.items()}, **extra}


def write_layer_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)


def print_layer_table(rows: list[dict[str, Any]]) -> None:
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


def print_summary(metrics: dict[str, float], tracker: Any, cfg: DictConfig, baseline: str) -> None:
    """The results table, then where the run's records are. Ratios are against `baseline`."""
    from rich.console import Console
    from rich.table import Table

    rows = [
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
    ]
    table = Table(title="ssmoe train: results", caption=f"baseline: {baseline} (dense)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("key", style="dim")
    for label, key, fmt in rows:
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
