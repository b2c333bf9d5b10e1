"""`ssmoe train`: compose conf/ -> build data, model, callbacks, tracker -> fit and test with Lightning
-> measure (accounting, export, latency, routing) -> one tracked run.

    app.py      the Hydra app: argv, run mode, one-line errors (the only Hydra runtime code)
    job.py      train(cfg, context): validate, build, tracker lifecycle, fit and test
    measure.py  what is measured after training: accounting, layer table, export + reload, latency, routing
    console.py  the layer table and the results summary printed at the end
"""

from ssmoe_cli.train.app import FAILED_MARKER, main

__all__ = ["FAILED_MARKER", "main"]
