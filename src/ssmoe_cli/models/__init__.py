"""Plain nn.Modules: they know nothing of Lightning, Hydra or MLflow.

Every model of ssmoe returns a ModelOutput (logits plus a dict of auxiliary losses, already
weighted, that the training loop adds to the classification loss) and reports its own parameter
accounting (see ssmoe_cli.accounting).
"""

from ssmoe_cli.models.base import ModelOutput

__all__ = ["ModelOutput"]
