"""ssmoe: experiments with spatially sparse mixture-of-experts networks.

The library (data modules, models, accounting) is importable without Hydra or MLflow side
effects; the `ssmoe` command line composes it (see ssmoe_cli.cli).
"""

__version__ = "0.1.0"

# Set by a running subcommand for the processes it starts (Lightning's DDP workers re-run argv without
# the subcommand word): read by ssmoe_cli.cli, written by the subcommand (ssmoe_cli.train.app).
SUBCOMMAND_ENV = "SSMOE_SUBCOMMAND"
