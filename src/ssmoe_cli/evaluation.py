"""Moved: routing diagnostics live in ssmoe_cli.models.diagnostics (`routing_metrics`, for any model).
The old names stay importable from here until the last caller has switched."""

from ssmoe_cli.models.diagnostics import GateView
from ssmoe_cli.models.diagnostics import routing_metrics as moe_metrics

__all__ = ["GateView", "moe_metrics"]
