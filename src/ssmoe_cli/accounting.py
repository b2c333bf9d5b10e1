"""Moved: the accounting lives in ssmoe_cli.models.accounting and the timer in ssmoe_cli.timing.
These names stay importable from here until the last caller has switched."""

from ssmoe_cli.models.accounting import (
    Accounting,
    account,
    dense_accounting,
    nonzero_macs,
    nonzero_params,
    total_params,
)
from ssmoe_cli.timing import latency_ms

__all__ = ["Accounting", "account", "dense_accounting", "latency_ms", "nonzero_macs", "nonzero_params", "total_params"]
