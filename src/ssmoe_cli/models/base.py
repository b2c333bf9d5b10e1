"""The small interface every model of ssmoe implements."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutput(NamedTuple):
    logits: torch.Tensor
    # Auxiliary losses, already multiplied by their coefficients (e.g. load balancing, t-SNE KL).
    # The training loss is cross-entropy + their sum; each is also logged as train/aux/<name>.
    aux: dict[str, torch.Tensor]
