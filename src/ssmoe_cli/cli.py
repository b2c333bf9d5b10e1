"""The `ssmoe` command: a thin dispatcher that imports a subcommand's module only when it runs.

Hydra owns argv for `ssmoe train`, so the subcommand word is removed before Hydra parses the rest.
Keep this module free of heavy imports: `ssmoe --help` must start in well under a second.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from dataclasses import dataclass

from ssmoe_cli import SUBCOMMAND_ENV, __version__


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        "ssmoe_cli.train", "train one model, or sweep with -m (Hydra overrides; see `ssmoe train --help`)"
    ),
    "report": Command("ssmoe_cli.report.cli", "summarise runs over seeds, fill the paper's blanks, tables and plots"),
    "export": Command("ssmoe_cli.export_cli", "write a run's sparse model file from its checkpoint, or --info FILE"),
    "sync": Command("ssmoe_cli.sync_cli", "re-log what a run kept offline while its MLflow server was down"),
}

USAGE = """usage: ssmoe [--help] [--version] <command> [args...]

Experiments with spatially sparse mixture-of-experts networks.

commands:
{commands}

examples:
  ssmoe train                                   train the default model on Fashion-MNIST
  ssmoe train model=fcl data=digits trainer.max_epochs=3 seed=1
  ssmoe train -m model=fcl seed=0,1,2           Hydra multirun, one MLflow experiment
  ssmoe train --cfg job                         print the composed config and exit
  mlflow ui                                     browse every run (same directory)
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ssmoe` console script (argv None: the process's own arguments)."""
    if argv is not None:
        return run(argv)
    # The process is ssmoe's own: its collector is tuned for a command that imports torch, Lightning
    # and MLflow (~850,000 tracked objects, of which a collection afterwards finds 12,000 unreachable:
    # measured). At the default thresholds (700, 10, 10) it ran ~1,200 collections during those
    # imports, 7 of them full: 4.1-4.4 s to import the three, 3.5 s at (10,000, 50, 50) (measured,
    # 2-core VM). Young cycles are still collected every 10,000 allocations.
    gc.set_threshold(10_000, 50, 50)
    try:
        return run(sys.argv[1:])
    finally:
        # The process ends next. Its interpreter then runs full collections over everything allocated,
        # which took 1.2-1.9 s of every command (5.55 -> 4.4 s for a process that only imports the
        # three). Frozen objects are skipped by them; they are still freed, and atexit handlers (log
        # files, MLflow) run.
        gc.freeze()


def run(args: list[str]) -> int:
    """Run one `ssmoe` command line (without the program name); returns the exit status."""
    args = list(args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"ssmoe {__version__}")
        return 0
    name, rest = args[0], args[1:]
    inherited = os.environ.get(SUBCOMMAND_ENV)
    if name not in COMMANDS and inherited in COMMANDS:
        # Lightning's DDP launcher re-runs `sys.argv` in its worker processes, i.e. `ssmoe <overrides>`
        # without the subcommand word (Hydra needed it removed); the parent left it in the environment.
        name, rest = inherited, args
    if name not in COMMANDS:
        print(
            f"ssmoe: unknown command '{name}'; choose one of: {', '.join(COMMANDS)} (see ssmoe --help)", file=sys.stderr
        )
        return 2
    try:
        module = importlib.import_module(COMMANDS[name].module)
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C before or after training (during training Lightning stops gracefully and the run ends
        # KILLED): one line, the shell's status for SIGINT, no traceback through the import machinery.
        print("ssmoe: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + 2
    except BrokenPipeError:
        # The reader went away (`ssmoe export --info FILE | head`): stop quietly, as Unix tools do,
        # and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE's status
