"""Gating networks: which experts each sample visits, and with what weight.

Every gate subclasses `Gate` (base.py: the contract) and returns a GateOutput: ptsne (experts
placed in a 2-D parametric t-SNE map), noisy_topk (Shazeer et al. 2017) and softmax (dense,
Jacobs et al. 1991). One module plus one YAML in conf/gating/ per gate.
"""

from ssmoe_cli.models.gating.base import Gate, GateOutput, cv_squared, topk_softmax

__all__ = ["Gate", "GateOutput", "cv_squared", "topk_softmax"]
