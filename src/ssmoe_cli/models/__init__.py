"""Plain nn.Modules: they know nothing of Lightning, Hydra, MLflow or the report.

Every model of ssmoe subclasses `Model` (base.py): forward -> ModelOutput (logits plus a dict of
auxiliary losses, already weighted, that the training loop adds to the classification loss) and
its own parameter accounting (accounting.py). Pruning methods and metrics ask a model only for its
prunable layers and its routing facts (`prunable_layers`, `routing_of`); routing diagnostics live
in diagnostics.py. Gates (gating/) and topologies (topology/) are one module each.
"""

from ssmoe_cli.models.base import Model, ModelOutput, Routing, prunable_layers, routing_of, vmappable

__all__ = ["Model", "ModelOutput", "Routing", "prunable_layers", "routing_of", "vmappable"]
