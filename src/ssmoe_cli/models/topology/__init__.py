"""How expert clusters connect: one module per `topology` option (conf/topology/).

A topology decides, for every expert b, which other experts' hidden units b reads (its in-links),
and through how many units per link (the fan-out). See docs/architecture.md for the semantics.
"""

from ssmoe_cli.models.topology.base import Routes, Topology

__all__ = ["Routes", "Topology"]
