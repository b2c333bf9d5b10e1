"""The pruning schedule as one value: when the pruning events happen (in epochs or optimizer steps),
the sparsity each reaches, and how much retraining must follow the last.

Users type its keys flat under `prune` (prune.schedule=iterative prune.rounds=4 prune.start=5 ...);
`Schedule.from_keys` composes the value from exactly those keys, so a sparsity method takes them as
`**schedule` and never lists them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ssmoe_cli.errors import SsmoeError
from ssmoe_cli.prune.masks import check_budget

SCHEDULES = ("oneshot", "iterative", "gradual")
UNITS = ("epoch", "step")
# The config keys (prune.<key>) whose field has another name; the other fields are their own key.
KEY_OF_FIELD = {"kind": "schedule", "target": "target_sparsity", "initial": "initial_sparsity"}


@dataclass(frozen=True)
class Schedule:
    """Pruning events r = 1..n at `start + (r - 1) * every` (epochs or optimizer steps done).

    The sparsity reached at event r of n:
    - oneshot: the target at once (n = 1; `rounds` and `every` are not used).
    - iterative (Han et al. 2015): every round prunes the same fraction of the surviving weights,
      so the kept fraction falls geometrically: s_r = 1 - (1 - s_f) ** (r / n); s_n = s_f.
    - gradual (Zhu & Gupta 2017): s_r = s_f + (s_i - s_f) * (1 - r / n) ** 3, i.e. their
      s_t = s_f + (s_i - s_f)(1 - t/T)^3 at t = r, T = n (t = 0 is the state before event 1):
      fast pruning first, while there are many redundant weights, slower towards the end.
    The last event must be followed by `min_retrain` epochs (steps) of training. Defaults are those
    of conf/prune/magnitude.yaml and obd.yaml.

    `target_nonzero` (prune.target_nonzero), when set, is the budget instead of `target`: the count
    of nonzero inference parameters of the whole model after the last round. Its sparsity s_f
    depends on the model, so the pruning callback resolves it (`for_sparsity`) when it prunes.
    """

    kind: str = "iterative"  # prune.schedule
    target: float = 0.9  # prune.target_sparsity: s_f
    rounds: int = 3
    start: int = 5
    every: int = 2
    unit: str = "epoch"
    min_retrain: int = 2
    initial: float = 0.0  # prune.initial_sparsity: s_i of the gradual schedule
    target_nonzero: int | None = None  # prune.target_nonzero: a budget; replaces target when set

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"prune.schedule={self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if self.unit not in UNITS:
            raise ValueError(f"prune.unit={self.unit!r}: choose epoch or step")
        if not 0.0 <= self.target < 1.0:
            raise ValueError(f"prune.target_sparsity={self.target} must be in [0, 1)")
        if not 0.0 <= self.initial <= self.target:
            raise ValueError(f"prune.initial_sparsity={self.initial} must be in [0, target_sparsity={self.target}]")
        if self.rounds < 1 or self.every < 1 or self.start < 0:
            raise ValueError(
                f"prune.rounds={self.rounds}, prune.every={self.every}, prune.start={self.start}: "
                "rounds and every must be >= 1, start >= 0"
            )
        if self.min_retrain < 0:
            raise ValueError(f"prune.min_retrain={self.min_retrain} must be >= 0")
        check_budget(self.target_nonzero)

    def for_sparsity(self, target: float) -> Schedule:
        """This schedule with final sparsity `target` (a budget resolved on a model). One-line
        SsmoeError when the gradual schedule's initial sparsity is above it."""
        if self.kind == "gradual" and self.initial > target:
            raise SsmoeError(
                f"prune.target_nonzero={self.target_nonzero} means sparsity {target:.4f} of the targeted weights, "
                f"below prune.initial_sparsity={self.initial}: lower prune.initial_sparsity"
            )
        return replace(self, target=target)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys of a schedule, as users type them under `prune`."""
        return tuple(KEY_OF_FIELD.get(f.name, f.name) for f in fields(cls))

    @classmethod
    def from_keys(cls, **keys: Any) -> Schedule:
        """The schedule of the given config keys (the others keep their defaults). `schedule` may
        also be a Schedule value itself, alone."""
        if isinstance(keys.get("schedule"), Schedule):
            if len(keys) > 1:
                raise TypeError(f"give a Schedule or its keys, not both: {sorted(set(keys) - {'schedule'})}")
            return keys["schedule"]
        unknown = sorted(set(keys) - set(cls.keys()))
        if unknown:
            raise TypeError(f"unknown pruning schedule key(s) {unknown}: choose among {', '.join(cls.keys())}")
        field_of_key = {v: k for k, v in KEY_OF_FIELD.items()}
        return cls(**{field_of_key.get(key, key): value for key, value in keys.items()})

    @property
    def n(self) -> int:
        return 1 if self.kind == "oneshot" else self.rounds

    def events(self) -> list[int]:
        """When each round happens: the number of epochs (or steps) trained before it."""
        return [self.start + r * self.every for r in range(self.n)]

    def sparsity(self, r: int) -> float:
        """Target sparsity after round r (1-based)."""
        if self.kind == "oneshot":
            return self.target
        if self.kind == "iterative":
            return 1.0 - (1.0 - self.target) ** (r / self.n)
        return self.target + (self.initial - self.target) * (1.0 - r / self.n) ** 3

    def sparsities(self) -> list[float]:
        return [self.sparsity(r) for r in range(1, self.n + 1)]

    def required(self) -> int:
        """Epochs (or steps) of training the schedule needs: last event + min_retrain."""
        return self.events()[-1] + self.min_retrain

    def check(self, budget: float) -> None:
        """Raise SsmoeError when training (budget epochs or steps) ends before the last round has
        had min_retrain epochs (steps) of retraining."""
        need = self.required()
        if budget >= need:
            return
        last = self.events()[-1]
        when = f"prune.start={self.start}"
        if self.n > 1:
            when += f" + ({self.n} - 1) rounds x prune.every={self.every}"
        if self.unit == "epoch":
            needs = f"trainer.max_epochs >= {need}, got {budget:g}; raise trainer.max_epochs"
        else:
            needs = (
                f"{need} training steps, the trainer runs {budget:g}; "
                "raise trainer.max_epochs (or trainer.max_steps / trainer.limit_train_batches)"
            )
        raise SsmoeError(
            f"the last pruning event ({when} = {self.unit} {last}) plus prune.min_retrain={self.min_retrain} "
            f"{self.unit}s of retraining needs {needs}, or lower prune.start / prune.rounds / prune.every"
        )
