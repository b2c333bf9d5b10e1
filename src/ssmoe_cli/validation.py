"""Checks of a composed `ssmoe train` config before any work starts.

Each problem is one line naming the key, the value and what is allowed; `validate` returns them
all, and the CLI prints them and exits with code 2. Only what Hydra cannot know is checked here
(Hydra already refuses unknown options and keys); each constructor re-checks its own arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


def is_number(value: Any) -> bool:
    """A finite real number: inf and nan (which YAML and the command line accept as floats) are not,
    nor are booleans (an int subclass) or strings."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def validate(cfg: Mapping[str, Any], gpu_available: Callable[[], bool] | None = None) -> list[str]:
    """Problems of a resolved config (a plain dict), one line each; empty when it is valid."""
    errors: list[str] = []

    def check(key: str, ok: Callable[[Any], bool], allowed: str) -> None:
        value = _get(cfg, key)
        if value is not None and not ok(value):
            errors.append(f"{key}={value!r}: {allowed}")

    # Every numeric check goes through is_number first, so inf, nan and text fail each of them.
    def positive(key: str) -> None:
        check(key, lambda v: is_number(v) and v > 0, "must be a finite number > 0")

    def sizes(key: str) -> None:
        check(
            key,
            lambda v: isinstance(v, list) and all(is_integer(s) and s > 0 for s in v),
            "sizes must be integers > 0",
        )

    def fraction(key: str) -> None:
        check(key, lambda v: is_number(v) and 0 <= v < 1, "must be in [0, 1)")

    def positive_int(key: str) -> None:
        check(key, lambda v: is_integer(v) and v > 0, "must be an integer > 0")

    for key in ("optim.lr", "gating.perplexity", "gating.pretrain_lr"):
        positive(key)
    for key in (
        "trainer.max_epochs",
        "data.batch_size",
        "data.eval_batch_size",
        "data.in_features",
        "data.num_classes",
        "model.num_experts",
        "gating.tsne_batch_size",
    ):
        positive_int(key)
    check("seed", lambda v: is_integer(v) and 0 <= v < 2**32, f"must be an integer in [0, {2**32 - 1}] (seed=1)")
    check("optim.weight_decay", lambda v: is_number(v) and v >= 0, "must be a finite number >= 0")
    check(
        "model.capacity_factor",
        lambda v: is_number(v) and v > 0,
        "must be a finite number > 0, or null for buffers sized to the busiest expert (no drops)",
    )
    check("gating.pretrain_epochs", lambda v: is_integer(v) and v >= 0, "must be an integer >= 0")
    for key in ("model.hidden", "model.expert_hidden", "gating.hidden", "baseline.hidden"):
        sizes(key)
    for key in ("prune.target_sparsity", "prune.initial_sparsity"):
        fraction(key)
    check("prune.density", lambda v: is_number(v) and 0 < v <= 1, "must be in (0, 1] (the kept fraction)")
    check("prune.rounds", lambda v: is_integer(v) and v >= 1, "must be an integer >= 1")

    experts, k = _get(cfg, "model.num_experts"), _get(cfg, "model.k")
    if isinstance(experts, int) and k is not None and not (isinstance(k, int) and 1 <= k <= experts):
        errors.append(f"model.k={k!r}: must be between 1 and model.num_experts={experts}")
    degree = _get(cfg, "topology.degree")
    if isinstance(experts, int) and isinstance(degree, int) and not 0 <= degree < experts:
        errors.append(f"topology.degree={degree}: must be in [0, model.num_experts={experts})")
    hidden = _get(cfg, "model.expert_hidden")
    fan_out = _get(cfg, "topology.fan_out")
    if isinstance(fan_out, int) and hidden and not 0 <= fan_out <= hidden[0]:
        errors.append(f"topology.fan_out={fan_out}: must be in [0, {hidden[0]}] (the experts' first hidden size)")
    perplexity, tsne_batch = _get(cfg, "gating.perplexity"), _get(cfg, "gating.tsne_batch_size")
    if is_number(perplexity) and is_integer(tsne_batch) and perplexity >= tsne_batch:
        errors.append(
            f"gating.perplexity={perplexity}: must be < gating.tsne_batch_size={tsne_batch} "
            "(a point cannot have more effective neighbours than its batch holds)"
        )
    target, initial = _get(cfg, "prune.target_sparsity"), _get(cfg, "prune.initial_sparsity")
    in_range = all(is_number(v) and 0 <= v < 1 for v in (target, initial))
    if in_range and initial > target:
        errors.append(
            f"prune.target_sparsity={target}: below prune.initial_sparsity={initial}, which the schedule "
            "already reaches; pruning never regrows weights"
        )
    for side, data_key in (("in_features", "data.in_features"), ("num_classes", "data.num_classes")):
        base, data = _get(cfg, f"baseline.{side}"), _get(cfg, data_key)
        if base is not None and data is not None and base != data:
            errors.append(
                f"baseline.{side}={base}: does not match {data_key}={data}; ratios would compare "
                "networks for different data (use ${" + data_key + "})"
            )
    accelerator = _get(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") and gpu_available is not None and not gpu_available():
        errors.append(f"trainer.accelerator={accelerator}: no CUDA GPU is visible here; use trainer=cpu")
    return errors
