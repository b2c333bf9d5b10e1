"""Training runs as plain records, and their grouping into configurations (no MLflow here).

The grouping rule: two runs belong to one configuration when they agree on every key of their
config identity except the seed. The identity is the resolved config that `ssmoe train` logs as
MLflow params, less the keys that only say where or how a job runs (tracking.identity's
VOLATILE_KEYS) and less the seed and its copies (keys such as model.seed whose value is the run's
seed in every run), plus the config-group choices it logs as tags (model, prune, data, ...). Only
keys whose value differs among the selected runs matter; nothing else is assumed about them.

A row names the keys that tell it apart from rows of the same model and prune method: a key is
shown when it takes several values among runs that share all their config-group choices (for a
param: e.g. model.hidden within the fcl runs) or, for a choice such as gating, among runs that
share model and prune. Keys that only follow from a choice (every param of the chosen gate) are
not shown. Two runs of one configuration with the same seed are one sample: the latest counts, the
others are set aside and listed, never dropped unsaid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ssmoe_cli.report.intervals import Bounds, Summary, summarize
from ssmoe_cli.tracking import VOLATILE_KEYS

BASE_KEYS = ("model", "prune")
# Tags that name a config-group choice of the run (see `ssmoe train`'s tags).
CHOICE_TAGS = ("model", "prune", "data", "gating", "topology", "baseline")
PARAM = "params."


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run, reduced to what the report reads."""

    run_id: str
    experiment: str = ""
    status: str = "FINISHED"
    start_time: int = 0  # ms since the epoch; the later of two runs with one seed counts
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """A key's value: `params.x`, `tags.x`, or a bare tag name such as `model`."""
        if key.startswith(PARAM):
            return self.params.get(key[len(PARAM) :])
        if key.startswith("tags."):
            return self.tags.get(key[len("tags.") :])
        return self.tags.get(key)

    @property
    def seed(self) -> str | None:
        return self.params.get("seed", self.tags.get("seed"))

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value is None or not math.isfinite(value):
            return None
        return float(value)

    @property
    def label(self) -> str:
        return f"{self.name or self.run_id} ({self.run_id[:8]})" if self.name else self.run_id


Key = tuple[tuple[str, str | None], ...]


@dataclass
class SetAside:
    """A run left out of the statistics because a later run of its configuration has its seed."""

    run: RunRecord
    kept: RunRecord


@dataclass
class Group:
    """The runs of one configuration, at most one per seed; `key` holds the keys its label shows."""

    key: Key
    runs: list[RunRecord]
    names: Mapping[str, str] = field(default_factory=dict)  # key -> its short name in labels
    set_aside: list[SetAside] = field(default_factory=list)
    bounds: Mapping[str, Bounds] = field(default_factory=dict)  # metric -> the values it can take
    _summaries: dict[str, Summary] = field(default_factory=dict, repr=False)

    def value(self, key: str) -> str | None:
        """The group's value of a key: its shown value, else the one value its runs share (or None)."""
        for k, v in self.key:
            if k == key:
                return v
        values = {run.get(key) for run in self.runs}
        return values.pop() if len(values) == 1 else None

    def values_of(self, key: str) -> set[str | None]:
        return {run.get(key) for run in self.runs}

    @property
    def model(self) -> str | None:
        return self.value("model")

    @property
    def prune(self) -> str | None:
        return self.value("prune")

    @property
    def label(self) -> str:
        """Short human label: `ptsne_moe / magnitude / target_sparsity=0.9`."""
        parts = [str(self.model), str(self.prune)]
        parts += [f"{self.names.get(k, k)}={v}" for k, v in self.key if k not in BASE_KEYS and v is not None]
        return " / ".join(parts)

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        text = self.label.replace(" / ", "_").replace("=", "-")
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

    @property
    def seeds(self) -> list[str]:
        return sorted({s for run in self.runs if (s := run.seed) is not None}, key=_number_first)

    def values(self, metric: str) -> list[float]:
        return [v for run in self.runs if (v := run.metric(metric)) is not None]

    def by_seed(self, metric: str) -> dict[str, float]:
        return {run.seed: v for run in self.runs if run.seed is not None and (v := run.metric(metric)) is not None}

    def summary(self, metric: str) -> Summary:
        if metric not in self._summaries:
            self._summaries[metric] = summarize(self.values(metric), bounds=self.bounds.get(metric, (None, None)))
        return self._summaries[metric]

    def mean(self, metric: str) -> float | None:
        return self.summary(metric).mean


# --------------------------------------------------------------------------- which keys


def _volatile(param: str) -> bool:
    return any(param == v or param.startswith(v + ".") for v in VOLATILE_KEYS)


def _varies(runs: Iterable[RunRecord], key: str) -> bool:
    return len({run.get(key) for run in runs}) > 1


def _seed_copy(runs: Sequence[RunRecord], key: str) -> bool:
    """A param equal to the run's seed wherever it is set (an interpolation such as model.seed: ${seed})."""
    having = [run for run in runs if run.get(key) is not None]
    return bool(having) and all(run.get(key) == run.seed for run in having)


def identity_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Choice tags and params (as `params.NAME`) whose value differs among the runs, less the seed."""
    params = sorted({p for run in runs for p in run.params})
    candidates = [*CHOICE_TAGS, *(PARAM + p for p in params if p != "seed" and not _volatile(p))]
    return [k for k in candidates if _varies(runs, k) and not (k.startswith(PARAM) and _seed_copy(runs, k))]


def _buckets(runs: Sequence[RunRecord], keys: Sequence[str]) -> list[list[RunRecord]]:
    out: dict[tuple[str | None, ...], list[RunRecord]] = {}
    for run in runs:
        out.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    return list(out.values())


def shown_keys(runs: Sequence[RunRecord], identity: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """model, prune, the identity keys that vary beyond what the runs' choices explain, then `extra`.

    A choice tag counts when it varies among runs sharing model and prune; a param when it varies
    among runs sharing every choice tag (module doc).
    """
    by_base = _buckets(runs, BASE_KEYS)
    by_choice = _buckets(runs, CHOICE_TAGS)
    keys = list(BASE_KEYS)
    for k in identity:
        pool = by_choice if k.startswith(PARAM) else by_base
        if k not in keys and any(_varies(bucket, k) for bucket in pool):
            keys.append(k)
    keys += [k for k in extra if k not in keys]
    return keys


def short_names(keys: Iterable[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other key shares (params.model.hidden -> hidden)."""
    keys = list(keys)
    parts = {k: k.removeprefix(PARAM).removeprefix("tags.").split(".") for k in keys}
    names = {}
    for k in keys:
        for n in range(1, len(parts[k]) + 1):
            name = ".".join(parts[k][-n:])
            if not any(o != k and ".".join(parts[o][-n:]) == name for o in keys):
                break
        names[k] = name
    return names


# --------------------------------------------------------------------------- grouping


def _number_first(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _value_order(runs: Sequence[RunRecord], key: str) -> dict[str | None, tuple]:
    """Numbers in numeric order, other values in the order their first run started (a sweep's order)."""
    first: dict[str, int] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        if (v := run.get(key)) is not None:
            first.setdefault(v, len(first))
    numeric = all(_number_first(v)[0] == 0 for v in first)
    order: dict[str | None, tuple] = {None: (2, 0.0)}
    for v, i in first.items():
        order[v] = (0, float(v)) if numeric else (1, float(i))
    return order


def group_runs(
    runs: Sequence[RunRecord], extra: Sequence[str] = (), bounds: Mapping[str, Bounds] | None = None
) -> tuple[list[Group], list[str]]:
    """(the configurations, the keys their labels show): see the module doc for the rule."""
    identity = identity_keys(runs)
    shown = shown_keys(runs, identity, extra)
    names = short_names(shown)
    buckets: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        buckets.setdefault(tuple(run.get(k) for k in (*identity, *extra)), []).append(run)
    groups = []
    for members in buckets.values():
        latest: dict[str, RunRecord] = {}
        unseeded, aside = [], []
        for run in sorted(members, key=lambda r: r.start_time):
            if run.seed is None:
                unseeded.append(run)
            else:
                if run.seed in latest:
                    aside.append(latest[run.seed])
                latest[run.seed] = run
        kept = sorted([*latest.values(), *unseeded], key=lambda r: (_number_first(r.seed or ""), r.start_time))
        key = tuple((k, members[0].get(k)) for k in shown)
        set_aside = [SetAside(r, latest[str(r.seed)]) for r in aside]
        groups.append(Group(key, kept, names, set_aside, bounds or {}))
    orders = {k: _value_order(runs, k) for k in shown}
    groups.sort(key=lambda g: tuple(orders[k][v] for k, v in g.key))
    return groups, shown
