"""Turn plain TOML mappings into frozen, validated dataclasses.

One generic builder serves every section: unknown keys, wrong types and impossible values
fail at load time with the file, the dotted key and the valid choices named.  Section
dataclasses declare their fields with type hints and, where a value has limits, a
``check`` entry in the field metadata::

    batch_size: int = field(default=32, metadata={"check": positive})
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hpcdiff.errors import ConfigError

Check = Callable[[Any], str | None]


def positive(value: Any) -> str | None:
    """Field check: the value must be > 0."""
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    """Field check: the value must be >= 0."""
    return None if value >= 0 else "must be >= 0"


def non_negative_or_auto(value: Any) -> str | None:
    """Field check: ``"auto"`` or a value >= 0."""
    return None if value == "auto" or value >= 0 else 'must be >= 0 or "auto"'


def fraction(value: Any) -> str | None:
    """Field check: the value must lie in [0, 1]."""
    return None if 0 <= value <= 1 else "must lie between 0 and 1"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "absent"
    if tp is Path:
        return "path (string)"
    return getattr(tp, "__name__", str(tp))


class _Context:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, message: str) -> ConfigError:
        where = f"[{key}]" if key else "top level"
        return ConfigError(f"{self.source}: {where} {message}")


def _convert(value: Any, tp: Any, key: str, ctx: _Context) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ctx.fail(key, f"is {value!r}; valid choices: {', '.join(map(repr, choices))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _convert(value, candidates[0], key, ctx)
        for arg in candidates:
            try:
                return _convert(value, arg, key, ctx)
            except ConfigError:
                continue
        raise ctx.fail(key, f"is {value!r}; expected {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ctx.fail(key, f"is {value!r}; expected {_type_name(tp)}")
        (item_tp, *_rest) = get_args(tp)
        return tuple(_convert(v, item_tp, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ctx.fail(key, f"is {value!r}; expected a table")
        _k_tp, v_tp = get_args(tp)
        return types.MappingProxyType(
            {str(k): _convert(v, v_tp, f"{key}.{k}", ctx) for k, v in value.items()}
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ctx.fail(key, f"is {value!r}; expected a table")
        return build_section(tp, value, key=key, ctx=ctx)
    if tp is Path:
        if not isinstance(value, str):
            raise ctx.fail(key, f"is {value!r}; expected a path (string)")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (ctx.base_dir / path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ctx.fail(key, f"is {value!r}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ctx.fail(key, f"is {value!r}; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ctx.fail(key, f"is {value!r}; expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ctx.fail(key, f"is {value!r}; expected a string")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def build_section(cls: type, mapping: Mapping[str, Any], *, key: str, ctx: _Context) -> Any:
    """Build the frozen dataclass ``cls`` from ``mapping``, validating every key."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("toml", True)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ctx.fail(
            key,
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}",
        )
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{key}.{name}" if key else name
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ctx.fail(dotted, f"is missing; expected {_type_name(hints[name])}")
            continue
        value = _convert(mapping[name], hints[name], dotted, ctx)
        check: Check | None = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ctx.fail(dotted, f"is {value!r}; {problem}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ctx.fail(key, str(exc)) from None


def to_plain(obj: Any) -> Any:
    """Convert a config dataclass tree back into TOML/JSON-friendly plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


__all__ = [
    "Check",
    "build_section",
    "fraction",
    "non_negative",
    "positive",
    "to_plain",
]
