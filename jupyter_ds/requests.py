"""Request bodies as dataclasses, validated field by field.

One small validator serves REST, WebSocket and CLI: a missing or wrong-typed field is a
400 that names it, text over its size limit is a 413 that names it, numbers outside
their range are a 400. Unknown fields are ignored so that clients speaking a newer
protocol (JupyterLab sends ``mime``, ``stream``, ``number``) are not refused.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from typing import Any, TypeVar

from jupyter_ds.errors import bad_request, too_large

T = TypeVar("T")

# Field metadata keys: "min"/"max" bound numbers, "max_chars" names the limit setting
# (looked up in the limits mapping) that bounds a text field, "choices" lists allowed values,
# "pattern" is a regular expression a text field must match in full.

# An adapter's name, as the engine accepts it (ds_engine.adapters.NAME_RE).
ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def wire_field(
    default: Any = dataclasses.MISSING, *, default_factory: Any = None, **meta: Any
) -> Any:
    """A request field with its validation metadata (see the keys above)."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


DEFAULT_LIMITS: dict[str, int] = {
    "max_input_chars": 200_000,
    "max_name_chars": 2_000,
    "max_tokens_limit": 1024,
}


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    hints = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return tuple(type(None) if h is None else h for h in hints)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(types_: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    parts = [names.get(t, t.__name__) for t in types_ if t is not type(None)]
    text = " or ".join(parts)
    return text + (" or null" if type(None) in types_ else "")


def _check_type(name: str, value: Any, allowed: tuple[type, ...]) -> Any:
    if value is None:
        if type(None) in allowed:
            return None
        raise bad_request(f"field '{name}' must be {_type_name(allowed)}, not null", name)
    # bool is a subclass of int: refuse true for an integer field and 1 for a boolean one.
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and (int in allowed or float in allowed):
        return float(value) if int not in allowed else value
    elif isinstance(value, float) and float in allowed:
        return value
    elif isinstance(value, str) and str in allowed:
        return value
    raise bad_request(
        f"field '{name}' must be {_type_name(allowed)}, got {type(value).__name__}", name
    )


def _check_text(name: str, value: str, what: str = "field") -> None:
    """Refuse characters no file, process argument or tokenizer can take.

    NUL ends a C string (git arguments, file names); a lone UTF-16 surrogate, which JSON
    allows as ``"\\ud800"``, cannot be encoded as UTF-8 (tokenizers, files, git). Both
    are a 400 naming the field, never an error deeper down.
    """
    if "\x00" in value:
        raise bad_request(f"{what} '{name}' contains a NUL character", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            f"{what} '{name}' contains a lone surrogate (\\u{ord(value[exc.start]):04x}) at "
            f"character {exc.start}: not valid Unicode text",
            name,
        ) from None


def _check_list(name: str, value: Any, meta: Any, limits: dict[str, int]) -> list[str]:
    """A list of strings: its length bounded by ``max_items``, each item by the input limit."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"field '{name}' must be a list of strings", name)
    if len(value) > meta.get("max_items", 100):
        raise too_large(f"field '{name}' has {len(value)} items, over the limit of "
                        f"{meta.get('max_items', 100)}", name)
    limit = limits["max_input_chars"]
    if any(len(v) > limit for v in value):
        raise too_large(f"an item of field '{name}' is over the limit of {limit} characters",
                        name)
    for item in value:
        _check_text(name, item, "an item of field")
    return list(value)


def _list_item_class(annotation: Any) -> type | None:
    """The dataclass of a ``list[SomeDataclass]`` (or its optional) field, else None."""
    for hint in _allowed_types(annotation):
        if typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint) or (None,)
            if dataclasses.is_dataclass(item):
                return item  # type: ignore[return-value]
    return None


def _check_objects(name: str, value: Any, cls: type, meta: Any,
                   limits: dict[str, int]) -> list[Any] | None:
    """A list of objects, each parsed as ``cls`` (errors name ``name[i].field``); the
    length is bounded by ``max_items`` and, with ``total_chars``, the characters of all
    their text fields together by the input limit."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request(f"field '{name}' must be a list of objects", name)
    most = meta.get("max_items", 100)
    if len(value) > most:
        raise too_large(f"field '{name}' has {len(value)} items, over the limit of {most}",
                        name)
    items = [parse_request(cls, item, limits, path=f"{name}[{i}].")
             for i, item in enumerate(value)]
    if meta.get("total_chars"):
        total = sum(len(v) for item in items for v in vars(item).values()
                    if isinstance(v, str))
        limit = limits["max_input_chars"]
        if total > limit:
            raise too_large(f"field '{name}' holds {total} characters in all, over the limit "
                            f"of {limit}", name)
    return items


def parse_request(cls: type[T], body: Any, limits: dict[str, int] | None = None, *,
                  path: str = "") -> T:
    """Build ``cls`` from a decoded JSON body, or raise an ApiError naming the field.

    ``path`` prefixes field names in errors (``cells[2].``), for objects inside lists.
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    if not isinstance(body, dict):
        if path:
            raise bad_request(f"field '{path[:-1]}' must be an object", path[:-1])
        raise bad_request("request body must be a JSON object")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = path + f.name
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise bad_request(f"missing required field '{name}'", name)
            continue
        item_cls = _list_item_class(hints[f.name])
        if item_cls is not None:
            values[f.name] = _check_objects(name, body[f.name], item_cls, f.metadata, limits)
            continue
        if typing.get_origin(hints[f.name]) is list:
            values[f.name] = _check_list(name, body[f.name], f.metadata, limits)
            continue
        value = _check_type(name, body[f.name], _allowed_types(hints[f.name]))
        meta = f.metadata
        if isinstance(value, str) and "max_chars" in meta:
            limit = limits[meta["max_chars"]]
            if len(value) > limit:
                raise too_large(
                    f"field '{name}' is {len(value)} characters, over the limit of {limit}",
                    name,
                )
        if isinstance(value, str):
            _check_text(name, value)
            if "choices" in meta and value not in meta["choices"]:
                raise bad_request(
                    f"field '{name}' must be one of {', '.join(meta['choices'])}, got "
                    f"{value[:80]!r}", name)
            if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
                raise bad_request(
                    f"field '{name}' must match {meta['pattern']}, got {value[:80]!r}", name
                )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low = meta.get("min")
            high = limits[meta["max_setting"]] if "max_setting" in meta else meta.get("max")
            if value != value or (low is not None and value < low) or (
                high is not None and value > high
            ):
                raise bad_request(
                    f"field '{name}' must be between {low} and {high}, got {value}", name
                )
        values[f.name] = value
    return cls(**values)
