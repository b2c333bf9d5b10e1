"""Every metric ssmoe logs: its MLflow name, labels, how one value is shown, when it is logged.

The one home for metric names (docs/configuration.md, "The metrics contract", has their meaning):
training logs them under these names, the console summary of `ssmoe train` and `ssmoe report` show
them with these labels and formats. Plain data and small helpers only: importing this module costs
nothing (no torch, no MLflow), so the CLI, the models and the report can all use it.

Names are stable: later versions add metrics and never rename one (MLflow keeps the old runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["fraction", "count", "ratio", "float"]
When = Literal["epoch", "end"]
Scope = Literal["all", "moe", "map", "quantize"]

# --------------------------------------------------------------------------- names

TRAIN_LOSS = "train/loss"
TRAIN_AUX_PREFIX = "train/aux/"  # + the auxiliary loss's name, as the model reports it
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
PARAMS_TOTAL = "params/total"
PARAMS_NONZERO = "params/nonzero"
PARAMS_ACTIVE = "params/active_per_sample"
FLOPS = "flops/per_sample"
PARAMS_TRAIN_ONLY = "params/train_only"
PARAMS_GATE_NONZERO = "params/gate_nonzero"
GATE_SHARE_NONZERO = "params/gate_share_nonzero"
GATE_SHARE_ACTIVE = "params/gate_share_active"
PRUNE_SPARSITY = "prune/sparsity"
PRUNE_TURNOVER = "prune/turnover"  # prune=set, rigl: connections replaced this epoch / active ones
PRUNE_TURNOVER_TOTAL = "prune/turnover_total"  # the same, summed over every update so far
RATIO_VS_FCL = "compression/ratio_vs_fcl"
BYTES_RATIO_VS_FCL = "compression/bytes_ratio_vs_fcl"
DENSE_BYTES = "size/dense_bytes"
SPARSE_BYTES = "size/sparse_bytes"
CSR_LAYERS = "inference/csr_layers"
TRAIN_S = "time/train_s"
EPOCH_S = "time/epoch_s"
INFER_MS_B1 = "time/infer_ms_b1"
INFER_MS_B256 = "time/infer_ms_b256"
LOAD_CV2 = "experts/load_cv2"
LOAD_MAX_OVER_MEAN = "experts/load_max_over_mean"
OUTPUT_CORR = "experts/output_corr"
GATE_ENTROPY = "gate/entropy"
# Routing diagnostics of issue 14 (models/diagnostics.py has their definitions).
MAX_VIO = "experts/max_vio"
DEAD_EXPERTS = "experts/dead"
UTIL_MIN = "experts/util_min"
UTIL_MAX = "experts/util_max"
IMPORTANCE_CV2 = "experts/importance_cv2"
CLASS_MI = "experts/class_mi"
DROPPED_PAIRS = "experts/dropped_pairs"
DROPPED_SAMPLES = "experts/dropped_samples"
OUTPUT_CORR_ROUTED = "experts/output_corr_routed"
GATE_TSNE_KL = "gate/tsne_kl"
GATE_TRUSTWORTHINESS = "gate/trustworthiness"
GATE_KNN1_ACC = "gate/knn1_acc"
# The exported file stage by stage (Deep Compression, Han et al. 2016), and quantize=kmeans's accuracies.
MODEL_F32_BYTES = "size/model_f32_bytes"
CSR_BYTES = "size/csr_bytes"
QUANTIZED_BYTES = "size/quantized_bytes"
ENTROPY_BYTES = "size/entropy_coded_bytes"
QUANT_ACC_BEFORE = "quantize/test_acc_before"
QUANT_ACC_SHARED = "quantize/test_acc_shared"


def aux_loss(name: str) -> str:
    """The MLflow name of a model's auxiliary loss `name` (logged every epoch)."""
    return TRAIN_AUX_PREFIX + name


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Metric:
    """One metric: MLflow name, labels, formats and when it exists.

    label: the row label of `ssmoe train`'s results table. short: a column header of `ssmoe report`
    (a few words: tables must fit an 80-column terminal). fmt: a str.format spec for one value in
    the console summary. kind: how the report shows a mean and its spread (a fraction in [0, 1] is
    shown in percent). when: every epoch or once at the end of a run. scope: which runs log it
    (all models, mixtures of experts only, gates with a 2-D map only, or quantize=kmeans runs
    only). low, high: the values the metric can take (None: unbounded); the report keeps its
    confidence intervals inside them.
    """

    name: str
    label: str
    short: str
    fmt: str
    kind: Kind
    when: When = "end"
    scope: Scope = "all"
    low: float | None = 0.0  # most metrics are counts, sizes, times, losses: never negative
    high: float | None = None

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """(low, high); a fraction is always within [0, 1]."""
        return (0.0, 1.0) if self.kind == "fraction" else (self.low, self.high)

    def format(self, value: float) -> str:
        """One value as the console summary shows it."""
        return self.fmt.format(value)


# In the order of the console summary (and of docs/configuration.md).
ALL: tuple[Metric, ...] = (
    Metric(TRAIN_LOSS, "train loss", "train loss", "{:.4f}", "float", when="epoch"),
    Metric(VAL_LOSS, "validation loss", "val loss", "{:.4f}", "float", when="epoch"),
    Metric(VAL_ACC, "validation accuracy", "val acc %", "{:.4f}", "fraction", when="epoch"),
    Metric(TEST_ACC, "test accuracy", "test acc %", "{:.4f}", "fraction"),
    Metric(TEST_LOSS, "test loss", "test loss", "{:.4f}", "float"),
    Metric(PARAMS_TOTAL, "params total", "params", "{:,.0f}", "count"),
    Metric(PARAMS_NONZERO, "params nonzero", "nonzero", "{:,.0f}", "count"),
    Metric(PARAMS_ACTIVE, "params active / sample", "active/sample", "{:,.0f}", "count"),
    Metric(FLOPS, "multiply-adds / sample", "MACs/sample", "{:,.0f}", "count"),
    Metric(PARAMS_TRAIN_ONLY, "params used only in training", "train-only", "{:,.0f}", "count"),
    Metric(PARAMS_GATE_NONZERO, "gate params nonzero", "gate nonzero", "{:,.0f}", "count", scope="moe"),
    Metric(GATE_SHARE_NONZERO, "gate share of nonzero params", "gate % nonzero", "{:.4f}", "fraction", scope="moe"),
    Metric(GATE_SHARE_ACTIVE, "gate share of active params", "gate % active", "{:.4f}", "fraction", scope="moe"),
    Metric(PRUNE_SPARSITY, "pruned fraction (targeted weights)", "pruned", "{:.4f}", "fraction"),
    Metric(PRUNE_TURNOVER, "connections replaced this epoch", "turnover", "{:.4f}", "float", when="epoch"),
    Metric(PRUNE_TURNOVER_TOTAL, "connections replaced so far", "turnover sum", "{:.4f}", "float", when="epoch"),
    Metric(RATIO_VS_FCL, "params compression vs baseline", "vs FCL", "{:.2f}x", "ratio"),
    Metric(SPARSE_BYTES, "exported file (bytes)", "file bytes", "{:,.0f}", "count"),
    Metric(DENSE_BYTES, "baseline dense (bytes)", "dense bytes", "{:,.0f}", "count"),
    Metric(BYTES_RATIO_VS_FCL, "file compression vs baseline", "file vs FCL", "{:.2f}x", "ratio"),
    Metric(MODEL_F32_BYTES, "this model, dense float32 (bytes)", "f32 bytes", "{:,.0f}", "count"),
    Metric(CSR_BYTES, "file, float32 CSR (bytes)", "CSR bytes", "{:,.0f}", "count"),
    Metric(QUANTIZED_BYTES, "file, weights shared (bytes)", "shared bytes", "{:,.0f}", "count", scope="quantize"),
    Metric(ENTROPY_BYTES, "file, + Huffman coded (bytes)", "coded bytes", "{:,.0f}", "count", scope="quantize"),
    Metric(QUANT_ACC_BEFORE, "test accuracy, unshared", "acc unshared %", "{:.4f}", "fraction", scope="quantize"),
    Metric(QUANT_ACC_SHARED, "test accuracy, untuned", "acc untuned %", "{:.4f}", "fraction", scope="quantize"),
    Metric(CSR_LAYERS, "layers run with CSR kernels", "CSR layers", "{:.0f}", "count"),
    Metric(TRAIN_S, "train time (s)", "train s", "{:.1f}", "float"),
    Metric(EPOCH_S, "epoch time (s)", "epoch s", "{:.2f}", "float"),
    Metric(INFER_MS_B1, "inference, batch 1 (ms)", "ms b1", "{:.3f}", "float"),
    Metric(INFER_MS_B256, "inference, batch 256 (ms)", "ms b256", "{:.3f}", "float"),
    Metric(LOAD_CV2, "expert load CV^2", "load CV²", "{:.3f}", "float", scope="moe"),
    Metric(LOAD_MAX_OVER_MEAN, "expert load max / mean", "load max/mean", "{:.2f}", "float", scope="moe", low=1.0),
    Metric(OUTPUT_CORR, "expert output correlation", "expert corr", "{:.3f}", "float", scope="moe", low=-1.0, high=1.0),
    Metric(GATE_ENTROPY, "gate entropy (nats)", "gate entropy", "{:.3f}", "float", scope="moe"),
    Metric(MAX_VIO, "expert load MaxVio", "MaxVio", "{:.3f}", "float", scope="moe"),
    Metric(DEAD_EXPERTS, "dead experts", "dead", "{:.0f}", "count", scope="moe"),
    Metric(UTIL_MIN, "expert use min (of samples)", "util min", "{:.4f}", "fraction", scope="moe"),
    Metric(UTIL_MAX, "expert use max (of samples)", "util max", "{:.4f}", "fraction", scope="moe"),
    Metric(IMPORTANCE_CV2, "gate mass per expert CV^2", "mass CV²", "{:.3f}", "float", scope="moe"),
    Metric(CLASS_MI, "class-expert MI (nats)", "class MI", "{:.3f}", "float", scope="moe"),
    Metric(DROPPED_PAIRS, "pairs dropped by capacity", "dropped", "{:.4f}", "fraction", scope="moe"),
    Metric(DROPPED_SAMPLES, "samples with all pairs dropped", "lost", "{:.4f}", "fraction", scope="moe"),
    Metric(
        OUTPUT_CORR_ROUTED,
        "expert corr, routed inputs",
        "routed corr",
        "{:.3f}",
        "float",
        scope="moe",
        low=-1.0,
        high=1.0,
    ),
    Metric(GATE_TSNE_KL, "gate t-SNE KL", "t-SNE KL", "{:.3f}", "float", scope="map"),
    Metric(GATE_TRUSTWORTHINESS, "gate trustworthiness T(12)", "trust T(12)", "{:.4f}", "fraction", scope="map"),
    Metric(GATE_KNN1_ACC, "gate 1-NN accuracy", "gate 1-NN %", "{:.4f}", "fraction", scope="map"),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in ALL}

# `ssmoe train`'s results table: the end-of-run metrics in ALL's order (the per-epoch ones are in
# MLflow's charts), less two facts about the export rather than results (baseline bytes, CSR layers).
SUMMARY: tuple[str, ...] = tuple(m.name for m in ALL if m.when == "end" and m.name not in (DENSE_BYTES, CSR_LAYERS))

# `ssmoe report`'s columns, in order: accuracy and size first, then time and experts.
REPORT: tuple[str, ...] = (
    TEST_ACC,
    PARAMS_NONZERO,
    PARAMS_ACTIVE,
    RATIO_VS_FCL,
    BYTES_RATIO_VS_FCL,
    EPOCH_S,
    INFER_MS_B256,
    LOAD_CV2,
    OUTPUT_CORR,
)
# The report's expert-load plot (load_cv2 is also a column; max/mean only plotted).
LOAD: tuple[str, ...] = (LOAD_CV2, LOAD_MAX_OVER_MEAN)


def get(name: str) -> Metric:
    """The spec of a metric name; an auxiliary loss gets a generic one. KeyError for unknown names."""
    if name.startswith(TRAIN_AUX_PREFIX):
        aux = name[len(TRAIN_AUX_PREFIX) :]
        return Metric(name, f"auxiliary loss {aux}", aux, "{:.4f}", "float", when="epoch")
    return BY_NAME[name]
