"""ssmoe: experiments with spatially sparse mixture-of-experts networks.

The library (data modules, models, accounting) is importable without Hydra or MLflow side
effects; the `ssmoe` command line composes it (see ssmoe_cli.cli).
"""

__version__ = "0.1.0"
