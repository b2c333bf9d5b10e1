"""The model classes a file may name, and the argument types each takes: loading builds only these.

A model file (`model.safetensors`) or a run's `config.yaml` describes its network as a config tree
in Hydra's `_target_` style. Such a file is data from anywhere, so it is never given to
`hydra.utils.instantiate`: Hydra resolves any dotted path, through module attributes too, so a
`_target_` such as `ssmoe_cli.data.idx_dataset.shutil.copyfile` with `_args_` would copy files.
`build` instead looks each `_target_` up, as an exact string, in the table below (or among class
objects the caller already holds, see `build`), checks every argument against that class's
declared types, and calls the class itself. Nothing else in a file can reach code: no dotted
path is ever imported, and `_args_`, `_partial_`, `_recursive_`, `_convert_` or any key the class
does not declare is refused.

The table is derived, not written: every concrete Model, Gate and Topology subclass in ssmoe's own
modules under ssmoe_cli/models/, with the argument types its constructor's annotations declare.
A new gate is one module and one YAML; a test checks that the table matches the shipped conf/.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from ssmoe_cli.errors import SsmoeError

TARGET = "_target_"


@dataclass(frozen=True)
class Arg:
    """The values one argument accepts: a short description and a test of a plain (JSON) value."""

    kind: str
    accepts: Callable[[Any], bool]
    nested: str | None = None  # a nested config of this kind ("gate", "topology") instead of a value


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _float(v: Any) -> bool:
    return (_int(v) or isinstance(v, float)) and math.isfinite(v)


def _either(*options: Arg) -> Arg:
    return Arg(" or ".join(o.kind for o in options), lambda v: any(o.accepts(v) for o in options))


INT = Arg("an integer", _int)
FLOAT = Arg("a finite number", _float)
BOOL = Arg("true or false", lambda v: isinstance(v, bool))
STR = Arg("a string", lambda v: isinstance(v, str))
NONE = Arg("null", lambda v: v is None)
INTS = Arg("a list of integers", lambda v: isinstance(v, list) and all(_int(x) for x in v))
GATE = Arg("a gate config", lambda v: isinstance(v, Mapping), nested="gate")
TOPOLOGY = Arg("a topology config", lambda v: isinstance(v, Mapping), nested="topology")


@dataclass(frozen=True)
class Entry:
    target: str  # the `_target_` files and conf/ name it by
    kind: str  # "model" | "gate" | "topology"
    cls: type
    args: Mapping[str, Arg]


@cache
def registry() -> dict[str, Entry]:
    """Every class a model file or run config may build, by its exact `_target_`: each concrete
    Model, Gate and Topology subclass defined in ssmoe's own modules under ssmoe_cli/models/, with
    the argument types its constructor declares. A new gate is one module beside the others: its
    annotated signature is its row. A parameter whose annotation has no plain-data form makes the
    class unloadable (TypeError here, caught by the registry test), never loosely typed."""
    entries = [_entry(cls, kind) for kind, cls in _shipped_classes()]
    return {e.target: e for e in entries}


def _shipped_classes() -> Iterator[tuple[str, type]]:
    """(kind, class) for ssmoe's own concrete models, gates and topologies. Only modules of ssmoe's
    installed models package are imported (walked from its own path): never a name read from a file."""
    # Imported here, not at module level: `ssmoe --help` must not pay for torch.
    import ssmoe_cli.models as package
    from ssmoe_cli.models.base import Model
    from ssmoe_cli.models.gating.base import Gate
    from ssmoe_cli.models.topology.base import Topology

    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
    for kind, base in (("model", Model), ("gate", Gate), ("topology", Topology)):
        for cls in _subclasses(base):
            if cls.__module__.startswith(package.__name__ + ".") and not inspect.isabstract(cls):
                yield kind, cls


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _entry(cls: type, kind: str) -> Entry:
    hints = get_type_hints(cls.__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind in kinds]
    return Entry(_name(cls), kind, cls, {p.name: _arg(hints.get(p.name), f"{_name(cls)}({p.name})") for p in params})


def _arg(hint: Any, where: str) -> Arg:
    """The Arg of a constructor annotation: plain scalars, sequences of ints, a nested gate or
    topology, and unions of those."""
    from ssmoe_cli.models.gating.base import Gate
    from ssmoe_cli.models.topology.base import Topology

    simple = {bool: BOOL, int: INT, float: FLOAT, str: STR, type(None): NONE, Gate: GATE, Topology: TOPOLOGY}
    if hint in simple:
        return simple[hint]
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        options = [_arg(a, where) for a in args]
        nested = next((o.nested for o in options if o.nested), None)
        return Arg(" or ".join(o.kind for o in options), lambda v: any(o.accepts(v) for o in options), nested)
    if origin in (list, tuple, Sequence) and set(args) - {Ellipsis} == {int}:
        return INTS
    raise TypeError(f"{where}: annotation {hint!r} has no plain-data form a model file could hold")


def _plain(value: Any) -> bool:
    """A value of a class the registry does not describe: scalars and lists of scalars only."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _entry_for_class(cls: type, kind: str) -> Entry:
    """An Entry for a class object the caller trusts (a run's own gate, say): its parameter names
    from its signature, each a plain value or a nested config (the file chooses nothing else)."""
    params = inspect.signature(cls).parameters.values()
    args = {
        p.name: _either(Arg("a plain value", _plain), Arg("a nested config", lambda v: isinstance(v, Mapping)))
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return Entry(_name(cls), kind, cls, args)


def build(config: Any, trusted: Iterable[type] = (), where: str = "model") -> Any:
    """Build the object a `_target_` config tree describes, from registered classes only.

    `trusted` adds class objects the caller already holds (e.g. the classes of the model a
    training job built from its own config), matched by their exact `module.QualName`; strings in
    the file never import anything. Raises SsmoeError naming the offending key for anything else.
    """
    extra = {}
    for cls in trusted:
        if not isinstance(cls, type):  # a name would be a dotted-path lookup: exactly what is refused
            raise TypeError(f"trusted takes classes, not {type(cls).__name__} {cls!r}; import the class and pass it")
        extra[_name(cls)] = cls
    return _build(config, where, None, extra)


def _build(config: Any, where: str, kind: str | None, extra: Mapping[str, type]) -> Any:
    if not isinstance(config, Mapping):
        raise SsmoeError(f"{where} must be a config with a {TARGET}, got {type(config).__name__}")
    target = config.get(TARGET)
    entry = registry().get(target) if isinstance(target, str) else None
    if entry is None and isinstance(target, str) and target in extra:
        entry = _entry_for_class(extra[target], kind or "model")
    if entry is None:
        kinds = kind or "model"
        raise SsmoeError(
            f"{where}.{TARGET}={target!r} is not a {kinds} class ssmoe defines; a model file or run "
            f"config may only build ssmoe's own model, gate and topology classes (docs/security.md)"
        )
    if kind is not None and entry.kind != kind:
        raise SsmoeError(f"{where}.{TARGET}={target!r} is a {entry.kind}, but {where} must be a {kind}")
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key == TARGET:
            continue
        here = f"{where}.{key}" if isinstance(key, str) and key.isidentifier() else f"{where}[{key!r}]"  # one line
        arg = entry.args.get(key) if isinstance(key, str) and not key.startswith("_") else None
        if arg is None:
            raise SsmoeError(
                f"{here}: {target} takes no argument {key!r} "
                f"(it takes {', '.join(entry.args) or 'none'}; Hydra's _args_, _partial_ and the like are refused)"
            )
        if not arg.accepts(value):
            raise SsmoeError(f"{here} must be {arg.kind}, got {value!r:.80}")
        if isinstance(value, Mapping):
            value = _build(value, here, arg.nested, extra)
        kwargs[key] = value
    try:
        return entry.cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:  # RuntimeError: torch cannot allocate
        raise SsmoeError(f"{where} ({target}) cannot be built from these arguments: {str(exc)[:200]}") from None


def config_targets(node: Any) -> set[str]:
    """Every `_target_` string in a config tree."""
    if isinstance(node, Mapping):
        found = {str(node[TARGET])} if TARGET in node else set()
        return found.union(*(config_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(config_targets(v) for v in node))
    return set()


def classes_of(model: Any, config: Mapping[str, Any]) -> set[type]:
    """The classes of a built model's parts (its modules and the plain objects they hold, such as a
    topology) that its own config names: what a training job may trust when it reloads the file
    it has just written from that model. Class objects, never strings to import."""
    from torch import nn

    named = config_targets(config)
    parts: list[Any] = []
    for module in model.modules() if isinstance(model, nn.Module) else ():
        parts.append(module)
        parts.extend(v for v in vars(module).values() if not isinstance(v, nn.Module))
    return {type(p) for p in parts if _name(type(p)) in named}
