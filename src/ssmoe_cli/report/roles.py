"""The roles of the paper's claims: the proposed model, the dense baseline, the model it is compared with.

A role is a model name as the runs' `model` tag spells it, optionally narrowed by other keys:
`ptsne_moe:gating=ptsne` is model=ptsne_moe with its t-SNE gate (a gating=noisy_topk ablation of
it is not the proposed model). A group plays the role when its model matches and each narrowing key
is either that value or absent from its runs. The defaults are the paper's; `ssmoe report
--proposed/--dense/--versus` change them, so a new model needs no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssmoe_cli.report.records import Group

DEFAULT_PROPOSED = "ptsne_moe:gating=ptsne"
DEFAULT_DENSE = "fcl:prune=none"
DEFAULT_VERSUS = "sgmoe:gating=noisy_topk,topology=isolated"


@dataclass(frozen=True)
class Role:
    """A model name and the key values that narrow it."""

    model: str
    where: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Role:
        """`MODEL[:KEY=VALUE,...]`; ValueError with the expected form otherwise."""
        model, _, rest = text.strip().partition(":")
        where = []
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(f"{text!r}: expected MODEL[:KEY=VALUE,...], e.g. {DEFAULT_VERSUS}")
            where.append((key.strip(), value.strip()))
        if not model.strip():
            raise ValueError(f"{text!r}: no model name; expected MODEL[:KEY=VALUE,...]")
        return cls(model.strip(), tuple(where))

    def matches(self, group: Group) -> bool:
        return group.model == self.model and all(group.values_of(k) <= {None, v} for k, v in self.where)

    def describe(self) -> str:
        """The role as a user would select its runs: `model=fcl, prune=none`."""
        return ", ".join(f"{k}={v}" for k, v in (("model", self.model), *self.where))

    def __str__(self) -> str:
        return self.model


@dataclass(frozen=True)
class Roles:
    """Who plays which part in the claims."""

    proposed: Role = Role.parse(DEFAULT_PROPOSED)
    dense: Role = Role.parse(DEFAULT_DENSE)
    versus: Role = Role.parse(DEFAULT_VERSUS)

    def rank(self, model: str | None) -> int:
        """Table order of a model: the dense baseline, others, the compared model, the proposed one."""
        if model == self.dense.model:
            return 0
        if model == self.versus.model:
            return 2
        return 3 if model == self.proposed.model else 1


def size_phrase(ratio: float, digits: int = 2, noun: str = "nonzero parameters") -> str:
    """`reference / candidate` sizes as words: "8.1x fewer", "1.25x more", or "the same number" when
    the ratio rounds to 1 at `digits` decimals (never "1.00x more")."""
    if ratio <= 0 or ratio == float("inf"):
        return f"{'no' if ratio == float('inf') else 'an unknown number of'} {noun}"
    if round(ratio, digits) == 1.0 and round(1 / ratio, digits) == 1.0:
        return f"the same number of {noun} (to {digits} decimals)"
    if ratio >= 1:
        return f"{ratio:.{digits}f}x fewer {noun}"
    return f"{1 / ratio:.{digits}f}x more {noun}"
