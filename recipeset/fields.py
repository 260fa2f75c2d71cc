"""Declarative config fields: a dataclass field carries its range or its valid names, and one function checks
any such dataclass — the run config's sections, a model's config, a loss's parameters::

    @dataclass
    class TrainConfig:
        lr: float = spec(1e-3, gt=0)
        schedule: str = spec("cosine", choices=("cosine", "inverse-sqrt", "constant"), kind="schedule")

Every mistake is one :class:`~recipeset.errors.RecipesetError` line naming the source (a file, "command line")
and the dotted key, with a suggestion for names.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from recipeset.errors import RecipesetError, shown
from recipeset.registry import Registry, suggest


def spec(default: Any = dataclasses.MISSING, *, factory: Any = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None,
         choices: tuple[str, ...] | Registry | None = None, kind: str | None = None) -> Any:
    """A dataclass field with its valid range (``ge``/``gt``/``le``/``lt``) or names (``choices``: a tuple or a
    registry, read when checked, so later registrations count); ``kind`` names the thing in messages."""
    meta = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "kind": kind}.items()
            if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(source: str, key: str, message: str) -> RecipesetError:
    """``<source>: <key>: <message>`` as a RecipesetError."""
    where = ": ".join(p for p in (source, key) if p)
    return RecipesetError(f"{where}: {message}" if where else message)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


INT_RANGE = (-(2**63), 2**63)  # what numpy and torch hold (int64); a larger int fails deep inside them


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, list, dict, tuple[X, ...], X | None);
    ints are accepted for floats; NaN and ±inf are refused, and ints outside int64."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return coerce(value, [a for a in args if a is not type(None)][0], key, source)
    base = origin or tp
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list | tuple),
        tuple: isinstance(value, list | tuple),
        dict: isinstance(value, Mapping),
    }[base]
    if not ok:
        raise fail(source, key, f"expected {_type_name(tp)}, got {type(value).__name__} {shown(value)}")
    if base is int and not INT_RANGE[0] <= value < INT_RANGE[1]:
        raise fail(source, key, f"{shown(value)} is out of range (a 64-bit integer, -2**63 to 2**63 - 1)")
    if base is float:
        if isinstance(value, int) and abs(value) >= 2**1024 or not math.isfinite(value):  # float() would overflow
            raise fail(source, key, f"expected a finite number, got {shown(value)}")
        value = float(value)
    elif base is list:
        value = list(value)
    elif base is tuple:  # tuple[X, ...]: each element an X
        value = tuple(coerce(v, typing.get_args(tp)[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    elif base is dict:
        value = dict(value)
    return value


def check_plain(value: Any, key: str, source: str) -> None:
    """A free-form value (``data.options``) must be what a config file holds and what config.json, the config hash
    and MLflow params can record: None, bool, str, a 64-bit int, a finite float, lists and string-keyed tables."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        coerce(value, type(value) if type(value) in (int, float) else float, key, source)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_plain(v, f"{key}[{i}]", source)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail(source, key, f"a table's keys are strings, not {shown(k)}")
            check_plain(v, f"{key}.{k}", source)
    else:
        raise fail(source, key, f"expected a number, string, list or table, got {type(value).__name__} {shown(value)}")


def check_value(value: Any, meta: Mapping[str, Any], key: str, source: str) -> None:
    """Check one value against its field's metadata (None always passes: "not set")."""
    if value is None:
        return
    choices = meta.get("choices")
    if isinstance(choices, Registry):
        choices.get(value, key, source)
    elif choices is not None and value not in choices:
        kind = meta.get("kind", "value")
        raise fail(source, key, f"unknown {kind} {shown(value)}{suggest(value, choices)} — valid: {', '.join(choices)}")
    lower = [(b, op) for op, b in (("ge", meta.get("ge")), ("gt", meta.get("gt"))) if b is not None]
    upper = [(b, op) for op, b in (("le", meta.get("le")), ("lt", meta.get("lt"))) if b is not None]
    bad = any(value < b if op == "ge" else value <= b for b, op in lower)
    bad |= any(value > b if op == "le" else value >= b for b, op in upper)
    if bad:
        sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        bound = " and ".join(f"{sym[op]} {b}" for b, op in lower + upper)
        raise fail(source, key, f"must be {bound}, got {value}")


def check_fields(obj: Any, prefix: str, source: str, skip: tuple[str, ...] = ()) -> None:
    """Check every field of the dataclass instance ``obj`` against its metadata (keys ``<prefix>.<field>``)."""
    for f in dataclasses.fields(obj):
        if f.name not in skip:
            check_value(getattr(obj, f.name), f.metadata, f"{prefix}.{f.name}", source)


def check_params(params: Mapping[str, Any], params_cls: type | None, prefix: str, owner: str,
                 source: str) -> dict[str, Any]:
    """Type-check and range-check ``params`` (``{field: value}``, e.g. a ``[model]`` section minus ``name``)
    against the dataclass ``params_cls`` of ``owner`` (e.g. "model 'decoder'"); returns the coerced values.
    An unknown key is "<prefix>.<key>: unknown parameter for <owner> (did you mean ...?) — valid: ..."."""
    fields = {f.name: f for f in dataclasses.fields(params_cls)} if params_cls is not None else {}
    hints = typing.get_type_hints(params_cls) if params_cls is not None else {}
    out: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}.{key}"
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise fail(source, dotted, f"unknown parameter for {owner}{suggest(key, fields)} — valid: {valid}")
        out[key] = coerce(value, hints[key], dotted, source)
        check_value(out[key], fields[key].metadata, dotted, source)
    return out
