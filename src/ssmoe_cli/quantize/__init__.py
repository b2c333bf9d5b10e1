"""Deep Compression's later stages (Han et al. 2016), after pruning: weight sharing and entropy coding.

- kmeans.py: per-layer k-means weight sharing (linear init) and centroid fine-tuning;
- stage.py: `KMeansQuantization`, the `quantize=kmeans` stage of `ssmoe train` (usable from Python:
  `KMeansQuantization(bits=5).apply(model, lambda: train_loader)`);
- codec.py: a shared layer's encoded form in the exported file (codebook, codes, relative indices);
- huffman.py: canonical Huffman coding with numpy.

The exporter (ssmoe_cli.export.file) writes a `Quantized` result with `export_model(..., quantized=q)`.
"""

from ssmoe_cli.quantize.kmeans import SharedLayer, finetune_centroids, kmeans_1d, share_weights
from ssmoe_cli.quantize.stage import KMeansQuantization, Quantized, accuracy

__all__ = [
    "KMeansQuantization",
    "Quantized",
    "SharedLayer",
    "accuracy",
    "finetune_centroids",
    "kmeans_1d",
    "share_weights",
]
