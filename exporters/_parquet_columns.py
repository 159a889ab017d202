"""The column values of an archive segment's JSON lines, read in one pass (the fast path).

:func:`encode_parquet <exporters._parquet.encode_parquet>` tries :func:`columns` first. It
appends each value straight to its column, with checks specialized per property from the same
plan (derived from the JSON Schema) that the checking path (``_parquet._parse``) walks
generically. It only vouches for values it converts exactly as that path does, and raises
:class:`NotVouched` for anything else: a wrong type, a missing or unknown key, a null, a
malformed timestamp, a line that is not JSON. The checking path then converts the segment or
names the line that is wrong, so both paths accept the same input and produce the same file
(``tests/test_parquet.py`` checks this against the checking path).

This module is one of the hot modules that ``scripts/compile.py`` compiles with mypyc: compiled,
it reads a segment with about a fifth less CPU than the pure-Python build (see
``docs/performance.md``).

Struct values whose properties are all scalars are checked and passed to Arrow as they are:
Arrow reads an absent key of a struct as null, which is what the checking path writes for an
absent optional property.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from exporters._parquet import (
    _EPOCH,
    _INT_BOUNDS,
    PARTITION_COLUMNS,
    SORT_COLUMNS,
    _Node,
    _plan,
)

__all__ = ["NotVouched", "columns"]

_Convert = Callable[[Any], Any]

_EXACT_TYPES: Final[dict[str, frozenset[type]]] = {
    "string": frozenset({str}),
    "int32": frozenset({int}),
    "int64": frozenset({int}),
    "float64": frozenset({int, float}),
    "bool": frozenset({bool}),
}
_SECOND: Final = timedelta(seconds=1)
_loads: Final = orjson.loads
_dumps: Final = orjson.dumps
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


class NotVouched(Exception):
    """A value the fast path does not convert: the checking path decides about the segment."""


def columns(lines: Sequence[bytes]) -> list[list[Any]]:
    """The Arrow column values of ``lines`` (each an event's JSON), in the schema's column
    order (a timestamp's millisecond column, then its text column), rows sorted as the file
    is. Raises :class:`NotVouched` when any line needs the checking path."""
    plan = _plan()
    reader = _reader(plan)
    values: list[list[Any]] = [[] for _ in plan]
    steps = tuple(zip(reader.names, reader.converters, [c.append for c in values], strict=True))
    everything, required = reader.keys, reader.required
    for line in lines:
        try:
            event = _loads(line)
        except orjson.JSONDecodeError:
            raise NotVouched from None
        if type(event) is not dict:
            raise NotVouched
        keys = event.keys()
        if keys == everything:  # the common case: every property present
            for name, convert, append in steps:
                append(convert(event[name]))
        elif keys <= everything and required <= keys:
            for name, convert, append in steps:
                append(convert(event[name]) if name in event else None)
        else:
            raise NotVouched
    out: list[list[Any]] = []
    for node, column in zip(plan, values, strict=True):
        if node.kind == "timestamp":
            out.append(_milliseconds(column))
        out.append(column)
    return _sorted_rows(plan, out)


class _Reader:
    """The per-property converters of a plan, and the top-level keys a line must have."""

    def __init__(self, plan: tuple[_Node, ...]) -> None:
        partition = PARTITION_COLUMNS[0]
        self.names = tuple(node.name for node in plan)
        self.converters = tuple(_converter(node) for node in plan)
        self.keys = frozenset(self.names) | {partition}
        self.required = frozenset(node.name for node in plan if node.required) | {partition}


@functools.cache
def _reader(plan: tuple[_Node, ...]) -> _Reader:
    return _Reader(plan)


def _converter(node: _Node) -> _Convert:
    """A function returning the column value of one property's value, or raising NotVouched."""
    if node.kind == "struct":
        return _struct(node)
    nullable = node.nullable
    if node.kind == "json":

        def json_text(value: Any) -> Any:
            if type(value) is dict:
                return _dumps(value, option=_SORT_KEYS).decode()
            if value is None and nullable:
                return None
            raise NotVouched

        return json_text
    if node.kind == "timestamp":
        pattern = node.pattern
        assert pattern is not None  # the plan gives every timestamp one

        def timestamp(value: Any) -> Any:
            if type(value) is str and pattern.fullmatch(value):
                return value
            raise NotVouched

        return timestamp
    return _scalar(node)


def _scalar(node: _Node) -> _Convert:
    types = _EXACT_TYPES[node.kind]
    nullable = node.nullable
    allowed = node.allowed
    bound = _INT_BOUNDS.get(node.kind)
    if allowed is not None:

        def one_of(value: Any) -> Any:
            if (type(value) in types and value in allowed) or (value is None and nullable):
                return value
            raise NotVouched

        return one_of
    if bound is not None:
        low = -bound

        def integer(value: Any) -> Any:
            if (type(value) is int and low <= value < bound) or (value is None and nullable):
                return value
            raise NotVouched

        return integer

    if len(types) == 1:
        (only,) = types

        def one_type(value: Any) -> Any:
            if type(value) is only or (value is None and nullable):
                return value
            raise NotVouched

        return one_type

    def plain(value: Any) -> Any:
        if type(value) in types or (value is None and nullable):
            return value
        raise NotVouched

    return plain


def _struct(node: _Node) -> _Convert:
    children = tuple((child.name, _converter(child)) for child in node.children)
    names = frozenset(child.name for child in node.children)
    required = frozenset(child.name for child in node.children if child.required)
    nullable = node.nullable
    rebuild = any(child.kind in ("json", "struct") for child in node.children)

    def struct(value: Any) -> Any:
        if type(value) is not dict:
            if value is None and nullable:
                return None
            raise NotVouched
        keys = value.keys()
        if not (keys <= names and required <= keys):
            raise NotVouched
        if rebuild:
            return {name: convert(value[name]) for name, convert in children if name in value}
        for name, convert in children:
            if name in value:
                convert(value[name])
        return value

    return struct


def _milliseconds(texts: list[str]) -> list[int]:
    """Milliseconds since the epoch of RFC 3339 texts laid out as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
    (what the schema's pattern allows today), each second's date parsed once; any other
    layout is the checking path's to convert."""
    seconds_of: dict[str, int] = {}
    out = []
    for text in texts:
        fraction = text[20:26]
        if len(text) != 27 or text[19] != "." or text[26] != "Z" or not fraction.isascii():
            raise NotVouched
        if not fraction.isdigit():
            raise NotVouched
        head = text[:19]
        seconds = seconds_of.get(head)
        if seconds is None:
            try:
                moment = datetime.fromisoformat(head).replace(tzinfo=UTC)
            except ValueError:  # e.g. month 13: the checking path names the line
                raise NotVouched from None
            seconds = seconds_of[head] = (moment - _EPOCH) // _SECOND
        out.append(seconds * 1000 + int(fraction[:3]))
    return out


def _sorted_rows(plan: tuple[_Node, ...], out: list[list[Any]]) -> list[list[Any]]:
    """``out`` with its rows in the file's order: by ``SORT_COLUMNS``, stable."""
    position = {}
    index = 0
    for node in plan:
        position[node.name] = index
        index += 2 if node.kind == "timestamp" else 1
    keys = list(zip(*(out[position[name]] for name in SORT_COLUMNS), strict=True))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if order == list(range(len(keys))):
        return out
    return [[column[i] for i in order] for column in out]
