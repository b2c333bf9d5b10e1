"""Gating networks: which experts each sample visits, and with what weight.

Every gate is an nn.Module built as ``Gate(in_features, num_experts, k, ...)`` whose forward
returns a GateOutput (see base.py): ptsne (experts placed in a 2-D parametric t-SNE map),
noisy_topk (Shazeer et al. 2017) and softmax (dense, Jacobs et al. 1991).
"""

from ssmoe_cli.models.gating.base import GateOutput, topk_softmax

__all__ = ["GateOutput", "topk_softmax"]
