"""Frozen dataclasses built from plain mappings (a params.yaml section), validated on the way:
unknown keys (with the closest allowed one), missing keys, wrong types and values outside a
field's `rule` each fail with one message naming the dotted key, the value and what is
allowed. kdpipe.core.config declares params.yaml with it; each method declares its section."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import field
from typing import Any, get_origin, get_type_hints

from kdpipe.core.errors import ConfigError


def rule(allowed: str, ok: Callable[[Any], bool], **kwargs) -> Any:
    """A dataclass field whose value must satisfy `ok`; `allowed` says what is allowed."""
    return field(metadata={"allowed": allowed, "ok": ok}, **kwargs)


def positive_int():
    return rule("an integer >= 1", lambda v: v >= 1)


def positive_float():
    return rule("a number > 0", lambda v: v > 0)


def weight():
    return rule("a number >= 0", lambda v: v >= 0)


def type_ok(expected: type, value: Any) -> bool:
    expected = get_origin(expected) or expected  # list[int] -> list
    if expected is bool:
        return isinstance(value, bool)
    if expected is float:  # `dvc exp run -S distill.kd.temperature=4` writes an int
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


TYPE_NAMES = {bool: "true or false", float: "a number", int: "an integer", str: "a string",
              list[int]: "a list of integers", list[str]: "a list of names",
              list[float]: "a list of numbers"}


def build(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`, found at dotted `path` in params.yaml."""
    where = path or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    rest = getattr(cls, "REST", None)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != rest}
    hints = get_type_hints(cls)
    for key in raw:
        # a REST key is a section of its own (a method's: a mapping); anything else is a typo
        if key not in fields and not (rest and isinstance(raw[key], dict)):
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            also = f", or {cls.REST_IS}" if rest else ""
            raise ConfigError(f"{_join(path, key)}: unknown key{hint}; "
                              f"allowed keys: {', '.join(fields)}{also}")
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing; expected {_allowed(f, hints[name])}")
            continue
        values[name] = _value(f, hints[name], raw[name], key)
    if rest:
        values[rest] = {k: v for k, v in raw.items() if k not in fields}
    obj = cls(**values)
    problem = obj.check() if hasattr(obj, "check") else None
    if problem:
        raise ConfigError(f"{where}: {problem} (got {raw})")
    return obj


def _value(f: dataclasses.Field, expected: type, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(expected):
        return build(expected, value, key)
    if not type_ok(expected, value):
        raise ConfigError(f"{key}={value!r}: expected {_allowed(f, expected)}")
    ok = f.metadata.get("ok")
    if ok and not ok(value):
        raise ConfigError(f"{key}={value!r}: expected {f.metadata['allowed']}")
    return float(value) if expected is float else value


def _allowed(f: dataclasses.Field, expected: type) -> str:
    if dataclasses.is_dataclass(expected):
        keys = ", ".join(g.name for g in dataclasses.fields(expected))
        return f"a section with keys: {keys}"
    return f.metadata.get("allowed", TYPE_NAMES.get(expected, expected.__name__))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
