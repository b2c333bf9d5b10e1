"""The Hydra app of `ssmoe train`: the only module that knows Hydra's runtime (argv, run mode, output
directory, config choices). It hands the job a plain JobContext and turns errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ssmoe_cli import SUBCOMMAND_ENV, signals
from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.metrics import VAL_ACC
from ssmoe_cli.train.job import JobContext, quiet_third_party, train

log = logging.getLogger(__name__)
CONFIG_PATH = "pkg://ssmoe_cli.conf"
FAILED_MARKER = "FAILED"  # written into a failed sweep job's output directory


def main(args: list[str]) -> int:
    """Run the Hydra app on the given overrides (the `ssmoe train` subcommand)."""
    quiet_third_party()
    if {"-m", "--multirun"} & set(args) and {"-c", "--cfg", "--info"} & {a.split("=")[0] for a in args}:
        # Hydra would raise its own ValueError (a traceback); say what works instead.
        print(
            "ssmoe: error: --cfg/--info print one job's config and cannot be combined with -m: drop -m to see "
            "a job (ssmoe train experiment=frontier --cfg job), or --cfg hydra to see the sweep's parameters",
            file=sys.stderr,
        )
        return 2
    # Hydra parses sys.argv itself: hand it the overrides without the subcommand word. DDP workers
    # re-run that command line; the environment tells the CLI it is `train` again.
    sys.argv = [sys.argv[0], *args]
    os.environ[SUBCOMMAND_ENV] = "train"
    hydra_app()
    return 0


def job_context() -> JobContext:
    """What Hydra knows about the running job, as plain values."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return JobContext(
        choices={k: (None if v is None else str(v)) for k, v in hc.runtime.choices.items()},
        output_dir=hc.runtime.output_dir,
        sweep_dir=str(Path(hc.sweep.dir).resolve()) if multirun else None,
        job_num=int(hc.job.num) if multirun else None,
    )


def check_objective(cfg: DictConfig) -> None:
    """Refuse, before any work, an `optimized_metric` measured on the test set."""
    name = cfg.get("optimized_metric")
    if name and str(name).startswith("test/"):
        raise SsmoeError(f"optimized_metric={name}: the test set must not select hyper-parameters; use val/acc")


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """What the job returns to a sweeper (Optuna): `optimized_metric` (hparams_search sets val/acc),
    else the validation accuracy. Never the test accuracy: the test set must not select the model."""
    check_objective(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return metrics.get(VAL_ACC)
    if name not in metrics:
        known = ", ".join(sorted(k for k in metrics if not k.startswith("test/")))
        raise SsmoeError(f"optimized_metric={name} was not measured by this run; choose one of: {known}")
    print(f"ssmoe: optimized metric {name} = {metrics[name]:.4f}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_app(cfg: DictConfig) -> float | None:
    from hydra.errors import InstantiationException

    context = job_context()
    multirun = context.sweep_dir is not None
    try:
        with signals.sigterm_ends_job():
            check_objective(cfg)
            return objective(cfg, train(cfg, context))
    except signals.Terminated as exc:
        # A scheduler stopping the job. DDP workers, stopped with rank 0, leave the one line to it.
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
            print(f"ssmoe: error: {exc}", file=sys.stderr)
        if not multirun:
            sys.exit(exc.exit_status)
        # A sweep's job hands in its outcome (submitit learns it from the job's result) and the sweep
        # ends with its summary naming the job; this process's later jobs stop at once (signals).
        (Path(context.output_dir) / FAILED_MARKER).write_text(f"{exc}\n")
        return None
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
        (Path(context.output_dir) / FAILED_MARKER).write_text(" / ".join(lines) + "\n")
        return None
