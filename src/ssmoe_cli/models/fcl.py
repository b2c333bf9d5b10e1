"""Dense fully connected network (FCL): the paper's reference, and LeNet-300-100 as the baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ssmoe_cli.models.accounting import Accounting, dense_accounting
from ssmoe_cli.models.base import Model, ModelOutput
from ssmoe_cli.models.layers import drop_probability, mlp, set_dropconnect


class FCL(Model):
    """in_features -> hidden... -> num_classes, ReLU between layers, logits out (no softmax).

    Training-only regularisers (no effect in eval mode): `dropout` on the hidden units after each
    activation, `dropconnect` on every weight (ssmoe_cli.models.layers)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
        dropconnect: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = [in_features, *hidden, num_classes]
        self.net = set_dropconnect(mlp(self.sizes, dropout=drop_probability("model.dropout", dropout)), dropconnect)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x), {})

    def accounting(self, x: torch.Tensor | None = None) -> Accounting:
        """Every sample uses every weight."""
        return dense_accounting(self)
