"""Gating networks: which experts each sample visits, and with what weight.

Every gate subclasses `Gate` (base.py: the contract) and returns a GateOutput: ptsne (experts
placed in a 2-D parametric t-SNE map; knn_graph.py its whole-set neighbour objective), the routing
controls pca_map, input_kmeans and lsh (spatial.py their shared centre routing), the routers
noisy_topk (Shazeer et al. 2017), switch (Fedus et al. 2021) and expert_choice (Zhou et al. 2022),
and softmax (dense, Jacobs et al. 1991). One module plus one YAML in conf/gating/ per gate.
"""

from ssmoe_cli.models.gating.base import Gate, GateOutput, cv_squared, topk_softmax

__all__ = ["Gate", "GateOutput", "cv_squared", "topk_softmax"]
