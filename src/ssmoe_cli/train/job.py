"""One training job: validate the config, build data, model and baseline, own the tracker's run from
start (or resume, or skip) to its final status, fit and test with Lightning, then measure.

Plain objects in, metrics out: what Hydra knows about the job arrives as a JobContext (train.app).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import ssmoe_cli
from ssmoe_cli import signals
from ssmoe_cli.checkpoint import load_checkpoint
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.tracking import NullTracker, Tracker, config_hash, finished_run, resolve_checkpoint, resume_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """Where and as what the job runs: the config choices, its output directory, its sweep."""

    choices: Mapping[str, str | None]
    output_dir: str
    sweep_dir: str | None = None  # set for a multirun job
    job_num: int | None = None


class _NoAds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_ADS = _NoAds()


def quiet_third_party() -> None:
    """Drop third-party chatter that says nothing about the run (ads, deprecations inside libraries).
    Idempotent: sweeps call it once per job."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    # Wherever SLURM's client is installed, Lightning advises `srun` for every run that does not use it;
    # ssmoe's SLURM jobs go through hydra/launcher=slurm (sbatch), so the advice never applies.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_ADS)  # a no-op when present


def run_tags(cfg: DictConfig, context: JobContext) -> dict[str, str]:
    """Tags that make runs easy to filter: chosen options, versions, sweep, commit."""
    choices = context.choices
    tags = {
        "run_type": "train",  # `ssmoe report` logs runs of type "report" into the same experiments
        "model": str(choices.get("model")),
        "prune": str(choices.get("prune", "none")),
        "data": str(choices.get("data")),
        "baseline": str(choices.get("baseline")),
        "seed": str(cfg.seed),
        "ssmoe_version": ssmoe_cli.__version__,
        "output_dir": context.output_dir,
    }
    for group in ("gating", "topology", "experiment", "arch"):
        if choices.get(group):
            tags[group] = str(choices[group])
    if context.sweep_dir is not None:
        tags["sweep_id"] = Path(context.sweep_dir).name
        tags["sweep_dir"] = context.sweep_dir
        tags["job_num"] = str(context.job_num)
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


def train(cfg: DictConfig, context: JobContext) -> dict[str, float]:
    """Train and evaluate one configuration; returns the final metrics (or a finished run's, when
    skip_finished finds one)."""
    quiet_third_party()  # again: launcher plugins (joblib) run jobs in fresh worker processes
    import torch
    from hydra.utils import instantiate

    from ssmoe_cli.validation import validate

    config = OmegaConf.to_container(cfg, resolve=True)
    problems = validate(config, gpu_available=torch.cuda.is_available)
    if problems:  # before any work: nothing is created, nothing is logged
        raise SsmoeError("\n".join(problems))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # Results depend on the thread count (reductions split differently): the effective count is part of
    # the job's identity and its params, also when `threads` is left to torch's default.
    config["threads"] = torch.get_num_threads()
    # DDP worker processes (launched by rank 0 with LOCAL_RANK / NODE_RANK set) train but do not
    # track: the run is rank 0's, so a multi-process job is still exactly one MLflow run.
    worker = int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0
    tracker: Tracker = NullTracker() if worker else instantiate(cfg.logger)
    tags = {**run_tags(cfg, context), "config_hash": config_hash(config), "threads": str(config["threads"])}
    if cfg.get("skip_finished"):  # before data, model and Lightning: a skipped job costs one query
        done = finished_run(tracker, tags["config_hash"])
        if done is not None:
            log.info("skip_finished: run %s already FINISHED with this config; not training again", done[0])
            print(f"ssmoe: skipped, already finished as MLflow run {done[0]} (skip_finished=true)")
            return done[1]
    ckpt = resolve_checkpoint(cfg.get("ckpt_path"), tracker, tags["config_hash"])
    if ckpt is not None:
        load_checkpoint(ckpt.path)  # refused as unsafe, or unreadable: one line, before the run is touched

    import pytorch_lightning as pl

    from ssmoe_cli.train.console import print_summary

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with signals.phase("while building the data and the model (no MLflow run yet)"):
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        baseline = instantiate(cfg.baseline)
    check_optimizer(cfg)
    try:
        # deferred: a SIGTERM while the run is being created (several store writes) waits until it is
        # whole, then ends it KILLED below; raised half way, it would leave the run RUNNING for ever.
        with signals.deferred("while starting the MLflow run"):
            if ckpt is not None and ckpt.run_id:
                tracker.resume(ckpt.run_id, resume_tags(ckpt, context.output_dir))
                log.info("resuming MLflow run %s from %s", ckpt.run_id, ckpt.path)
            else:
                tracker.start(config, tags, run_name=f"{tags['model']}-{tags['data']}-s{cfg.seed}")
        metrics = fit_and_test(cfg, datamodule, model, baseline, tracker, ckpt.path if ckpt else None)
    except BaseException as exc:
        # Ctrl-C and SIGTERM end the run KILLED (Lightning turns Ctrl-C into exit(1) after its graceful
        # shutdown); anything else FAILED, with the reason.
        signals.ending()  # a SIGTERM now must not cut the cleanup short and leave the run RUNNING
        terminated = isinstance(exc, signals.Terminated)
        status = "KILLED" if terminated or isinstance(exc, KeyboardInterrupt | SystemExit) else "FAILED"
        if getattr(exc, "step", None) is not None:
            tracker.set_tags({"failed_step": str(exc.step)})
        tracker.end(status, error=exc.reason if terminated else f"{type(exc).__name__}: {exc}")
        if terminated:  # the one line says what is kept and how to continue
            exc.outcome = signals.outcome(tracker.run_id, newest_checkpoint(cfg, ckpt.path if ckpt else None))
        warn_offline(tracker)
        raise
    signals.ending()
    tracker.end("FINISHED")
    if not worker:
        print_summary(metrics, tracker, cfg, baseline=tags["baseline"])
    warn_offline(tracker)
    return metrics


def newest_checkpoint(cfg: DictConfig, resumed_from: Path | None) -> Path | None:
    """The run's newest checkpoint: this job's last.ckpt once it wrote one, else the one it resumed from."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    written = Path(dirpath) / "last.ckpt" if dirpath else None
    return written if written is not None and written.is_file() else resumed_from


def warn_offline(tracker: Tracker) -> None:
    """The tracking server was lost mid-run: say where the records are and how to re-log them."""
    note = tracker.offline_note()
    if note:
        print(f"ssmoe: warning: {note}", file=sys.stderr)


def check_optimizer(cfg: DictConfig) -> None:
    """Build the configured optimizer once on a stand-in parameter: a key its class does not take
    (`fused` for RMSprop, a misspelt one) or a value it refuses is one line before the MLflow run
    starts, not a traceback from inside Lightning's configure_optimizers."""
    import torch
    from hydra.utils import instantiate

    try:
        instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    except Exception as exc:  # TypeError (a key it does not take), ValueError (a value it refuses)
        raise SsmoeError(
            f"optim._target_={cfg.optim.get('_target_')} cannot be built from the optim keys: {exc} "
            "(remove a key it does not take with ~optim.<key>, e.g. ~optim.fused)"
        ) from None


def fit_and_test(
    cfg: DictConfig, datamodule: Any, model: Any, baseline: Any, tracker: Tracker, ckpt_path: Path | None = None
) -> dict[str, float]:
    """Fit (from ckpt_path when resuming) and test with Lightning, then measure on rank 0."""
    import torch
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ProgressBar

    from ssmoe_cli.callbacks import EpochTimer, FiniteLossGuard, RngState, StopOnSigterm
    from ssmoe_cli.module import ClassifierModule
    from ssmoe_cli.train.measure import measure

    datamodule.setup("fit")
    # scheduler=none composes to an empty node: a constant learning rate.
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    module = ClassifierModule(
        model, num_classes=cfg.data.num_classes, optimizer=instantiate(cfg.optim), scheduler=scheduler
    )
    timer = EpochTimer()
    pruner = instantiate(cfg.prune)
    # quantize=none composes to an empty node: the weights stay float32.
    quantizer = instantiate(cfg.quantize) if cfg.get("quantize") else None
    callbacks: list[Any] = [timer, pruner, FiniteLossGuard(), RngState(), StopOnSigterm()]
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
        with signals.phase("while preparing the model"):
            prepare(datamodule.train_set.tensors[0].to(device), generator)
    # weights_only: a checkpoint file is loaded as tensors and plain containers, never unpickled code.
    # deferred: a SIGTERM stops training at the next batch boundary (the last epoch's checkpoint kept).
    with signals.deferred("during training"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    quantized = None
    if quantizer is not None:  # after training and pruning, so test/acc and the file are the quantised model's
        with signals.phase("while quantising the weights"):
            quantized = quantizer.apply(model, datamodule.train_dataloader, datamodule.test_dataloader)
    train_s = time.perf_counter() - start
    # The last epoch's validation metrics (what a hyper-parameter search optimises), read before test.
    validated = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    results = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    results = {**validated, **results}
    if not trainer.is_global_zero:
        return results  # accounting, export and plots are rank 0's
    extra = measure(
        cfg,
        model,
        baseline,
        datamodule,
        tracker,
        pruner=pruner,
        train_s=train_s,
        epoch_s=timer.mean,
        quantized=quantized,
    )
    tracker.log_metrics(extra, step=trainer.global_step)
    return {**results, **extra}
