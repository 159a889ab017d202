"""Parquet encoding of archive segments, derived from the published JSON Schema of the event.

An archive segment is the JSON lines of one partition, ``org_id=<org>/dt=<day>``.
:func:`encode_parquet` turns those lines into one Parquet file that Athena, Glue, DuckDB and
pyarrow can read, and :func:`decode_parquet` turns the file back into the event dicts. The
Arrow schema is not written out by hand. :func:`arrow_schema` walks the ``properties`` of
``audit_middleware/schema/audit-event.v1.json`` and maps each one by the rules below, so the
two cannot drift. A JSON Schema construct that this module cannot map raises ``RuntimeError``
when the schema is derived. Nothing is left out silently.

Mapping (JSON Schema -> Arrow -> Parquet/Athena):

* ``string``, ``enum`` of strings -> ``string``. ``["string", "null"]`` -> nullable ``string``.
* ``integer`` -> ``int64``, except the narrow fields in ``_INT32`` (``schema_version`` and
  ``request.status``) -> ``int32``. ``number`` -> ``float64``. ``boolean`` -> ``bool``.
* An object with fixed ``properties`` and ``additionalProperties: false`` -> a struct of its
  properties (``actor``, ``target``, ``request``, ``client``, ``error``, ``trace``).
  ``oneOf: [null, object]`` makes the struct nullable.
* A free-form object (no ``properties``: ``metadata``, ``request.query``,
  ``request.headers``, ``integrity``) -> ``string`` holding compact JSON with sorted keys. Its
  shape varies per event, so a struct or map column would change from file to file. Athena
  reads the value with ``json_extract(metadata, '$.key')`` and DuckDB with ``metadata->>'key'``.
  These columns carry the Arrow field metadata ``encoding=json``.
* ``occurred_at`` -> two columns. Athena and Glue read Parquet timestamps only at millisecond
  precision (pyarrow's default is nanoseconds). The event keeps microseconds. So
  ``occurred_at`` is ``timestamp[ms, tz=UTC]`` (INT64 TIMESTAMP(MILLIS, UTC)) for range
  filters, pruning and ordering. ``occurred_at_text`` keeps the exact RFC 3339 text of the
  event, so nothing is lost and :func:`decode_parquet` returns the original string.
* Data columns are non-nullable wherever the JSON Schema forbids null for a required property.
  Column names are checked: lowercase, no dots (Athena rejects dotted column names).

Partition columns: ``org_id`` and ``dt`` are the Hive partition keys of the object's path
(``org_id=<org>/dt=<day>/...``). Athena needs partition columns to be absent from the data
columns, so ``org_id`` is not a column here. ``dt`` is derived from ``occurred_at`` and is
not in the event at all. The JSON-lines archive keeps ``org_id`` in every row, because its
rows are the event dicts verbatim. A decoded Parquet row therefore has no ``org_id`` key.
The reader takes it from the path (``hive_partitioning``). The path holds the
percent-encoded partition value, or ``_global`` for events without an organization.

Layout: rows are sorted by ``occurred_at`` (the millisecond column) and then ``id``. The Parquet
footer declares this (``sorting_columns``), so keyset pagination on ``(occurred_at, id)`` and
min/max pruning can rely on it. Ids are UUIDv7 made from the same clock reading as
``occurred_at``, so this is also id order in practice. Within one millisecond, rows are in
``id`` order rather than microsecond order. ``occurred_at_text`` keeps the microseconds.
Compression is zstd (level pinned). Dictionary encoding, statistics and the page index are on.
There is one row group unless the data exceeds ``_MAX_ROW_GROUP_BYTES`` (128 MiB in memory).
The data page size limit is 1 MiB. The writer checks it every ``write_batch_size`` values, so
a page can overshoot by at most one batch.

pyarrow is an optional dependency (the ``parquet`` extra). It is imported when a function
here is called, never at import time.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from audit_middleware._schema import load_schema

__all__ = [
    "PARTITION_COLUMNS",
    "SORT_COLUMNS",
    "arrow_schema",
    "decode_parquet",
    "encode_parquet",
    "events_from_table",
    "write_table",
]

INSTALL_HINT: Final = "Parquet archives need pyarrow: pip install 'audit-log-middleware[parquet]'"

#: Hive partition keys of an archive object's path; never data columns.
PARTITION_COLUMNS: Final = ("org_id", "dt")
#: The rows' order, declared in the footer.
SORT_COLUMNS: Final = ("occurred_at", "id")

# Explicit choices the JSON Schema cannot express. Each name must exist in the schema.
_INT32: Final = frozenset({"schema_version", "request.status"})
_TIMESTAMPS: Final = {"occurred_at": "occurred_at_text"}  # column -> its exact-text column

_MAX_ROW_GROUP_BYTES: Final = 128 << 20
_DATA_PAGE_BYTES: Final = 1 << 20
_ZSTD_LEVEL: Final = 3
_JSON_FIELD_METADATA: Final = {b"encoding": b"json"}
_COLUMN_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def _pyarrow() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or ImportError with the install hint."""
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return pa, pq


# -- derivation from the JSON Schema -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """How one property of the JSON Schema is stored."""

    name: str
    path: str  # dotted, for messages and the override tables
    kind: str  # string | int32 | int64 | float64 | bool | json | timestamp | struct
    required: bool  # the key must be present
    nullable: bool  # the value may be null
    allowed: frozenset[Any] | None = None  # const / enum values
    pattern: re.Pattern[str] | None = None  # only checked for timestamps
    children: tuple[_Node, ...] = ()

    @property
    def arrow_nullable(self) -> bool:
        return self.nullable or not self.required


_SCALARS: Final = {"string": "string", "integer": "int64", "number": "float64", "boolean": "bool"}


def _derive_node(name: str, spec: Mapping[str, Any], path: str, required: bool) -> _Node:
    def fail(why: str) -> RuntimeError:
        return RuntimeError(f"cannot map {path!r} of the audit event JSON Schema to Arrow: {why}")

    if not _COLUMN_NAME.fullmatch(name):
        raise fail("column names must be lowercase letters, digits and underscores (no dots)")
    body = dict(spec)
    nullable = False
    if "oneOf" in body:
        variants = body.pop("oneOf")
        others = [v for v in variants if v != {"type": "null"}]
        if len(others) != 1 or len(variants) != 2:
            raise fail("only oneOf [null, <one schema>] is supported")
        nullable = True
        body.update(others[0])
    allowed: frozenset[Any] | None = None
    json_type: Any = body.get("type")
    if "const" in body:
        allowed = frozenset([body["const"]])
    elif "enum" in body:
        allowed = frozenset(body["enum"])
        nullable = nullable or None in allowed
        allowed -= {None}
    if allowed is not None and json_type is None:
        kinds = {type(v) for v in allowed}
        names = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if len(kinds) != 1 or (kind_type := kinds.pop()) not in names:
            raise fail("const/enum values must all be strings, integers, numbers or booleans")
        json_type = names[kind_type]
    if isinstance(json_type, list):
        nullable = nullable or "null" in json_type
        types = [t for t in json_type if t != "null"]
        if len(types) != 1:
            raise fail(f"a union of types {json_type} is not supported")
        json_type = types[0]
    if nullable and not required:
        raise fail("an optional property that may also be null cannot round-trip (absent vs null)")

    if json_type == "object":
        if "properties" not in body:
            return _Node(name, path, "json", required, nullable)
        if body.get("additionalProperties") is not False:
            raise fail("an object with properties needs additionalProperties: false")
        inner = set(body.get("required", ()))
        children = tuple(
            _derive_node(child, child_spec, f"{path}.{child}", child in inner)
            for child, child_spec in body["properties"].items()
        )
        return _Node(name, path, "struct", required, nullable, children=children)
    if json_type not in _SCALARS:
        raise fail(f"type {json_type!r} is not supported")
    kind = _SCALARS[json_type]
    if path in _INT32:
        if kind != "int64":
            raise fail("listed as int32 but not an integer")
        kind = "int32"
    if path in _TIMESTAMPS:
        if kind != "string" or "pattern" not in body or nullable or not required:
            raise fail("a timestamp must be a required, non-null string with a pattern")
        if "." in path:
            raise fail("only top-level properties can be timestamps")
        return _Node(
            name, path, "timestamp", required, nullable, pattern=re.compile(body["pattern"])
        )
    return _Node(name, path, kind, required, nullable, allowed=allowed)


def _derive(schema: Mapping[str, Any]) -> tuple[_Node, ...]:
    """The data columns of ``schema`` (an event JSON Schema), partition columns excluded."""
    properties: Mapping[str, Any] = schema["properties"]
    required = set(schema.get("required", ()))
    if schema.get("additionalProperties") is not False:
        raise RuntimeError("the audit event JSON Schema must set additionalProperties: false")
    org, dt = PARTITION_COLUMNS
    if org not in properties:
        raise RuntimeError(f"the audit event JSON Schema has no {org!r}: fix PARTITION_COLUMNS")
    if dt in properties:
        raise RuntimeError(f"{dt!r} is a partition column and cannot be an event property")
    nodes = tuple(
        _derive_node(name, spec, name, name in required)
        for name, spec in properties.items()
        if name != org
    )
    seen: set[str] = set()

    def walk(node: _Node) -> None:
        seen.add(node.path)
        for child in node.children:
            walk(child)

    for node in nodes:
        walk(node)
    stale = (_INT32 | set(_TIMESTAMPS)) - seen
    if stale:
        raise RuntimeError(f"type overrides name properties the schema lacks: {sorted(stale)}")
    clashes = set(_TIMESTAMPS.values()) & (seen | {org})
    if clashes:
        raise RuntimeError(f"timestamp text columns clash with properties: {sorted(clashes)}")
    by_name = {node.name: node for node in nodes}
    for column in SORT_COLUMNS:
        sort_node = by_name.get(column)
        if (
            sort_node is None
            or sort_node.kind not in ("timestamp", "string")
            or sort_node.arrow_nullable
        ):
            raise RuntimeError(f"sort column {column!r} must be a required, non-null data column")
    return nodes


@functools.cache
def _plan() -> tuple[_Node, ...]:
    return _derive(load_schema())


def _arrow_type(pa: Any, node: _Node) -> Any:
    if node.kind == "struct":
        return pa.struct([_arrow_field(pa, child) for child in node.children])
    return {
        "string": pa.string,
        "json": pa.string,
        "int32": pa.int32,
        "int64": pa.int64,
        "float64": pa.float64,
        "bool": pa.bool_,
    }[node.kind]()


def _arrow_field(pa: Any, node: _Node) -> Any:
    metadata = _JSON_FIELD_METADATA if node.kind == "json" else None
    return pa.field(node.name, _arrow_type(pa, node), node.arrow_nullable, metadata)


def arrow_schema() -> Any:
    """The ``pyarrow.Schema`` of the archive's Parquet files, derived from the JSON Schema.

    The columns follow the JSON Schema's property order. ``org_id`` is left out because it
    is a partition column. ``occurred_at`` is followed by ``occurred_at_text`` (see the
    module docstring).
    """
    pa, _ = _pyarrow()
    fields = []
    for node in _plan():
        if node.kind == "timestamp":
            fields.append(pa.field(node.name, pa.timestamp("ms", tz="UTC"), node.arrow_nullable))
            fields.append(pa.field(_TIMESTAMPS[node.path], pa.string(), node.arrow_nullable))
        else:
            fields.append(_arrow_field(pa, node))
    schema_id = str(load_schema().get("$id", "audit-event.v1.json"))
    return pa.schema(fields, metadata={b"audit_event_schema": schema_id.encode()})


# -- encoding ----------------------------------------------------------------------------------

_PY_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "string": str,
    "int32": int,
    "int64": int,
    "float64": (int, float),
    "bool": bool,
}
_INT_BOUNDS: Final = {"int32": 1 << 31, "int64": 1 << 63}


def _convert(node: _Node, value: Any) -> Any:
    """One JSON value as the Python value of its Arrow column; ValueError if it does not fit."""
    if value is None:
        if not node.nullable:
            raise ValueError(f"{node.path} must not be null")
        return None
    if node.kind in ("json", "struct"):
        if not isinstance(value, dict):
            raise ValueError(f"{node.path} must be an object, got {type(value).__name__}")
        if node.kind == "json":
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        return _convert_object(node.children, value, node.path)
    if node.kind == "timestamp":
        if not isinstance(value, str) or node.pattern is None or not node.pattern.fullmatch(value):
            raise ValueError(f"{node.path} must be an RFC 3339 UTC timestamp, got {value!r}")
        return value
    if isinstance(value, bool) != (node.kind == "bool") or not isinstance(
        value, _PY_TYPES[node.kind]
    ):
        raise ValueError(f"{node.path} must be {node.kind}, got {type(value).__name__}")
    bound = _INT_BOUNDS.get(node.kind)
    if bound is not None and isinstance(value, int) and not -bound <= value < bound:
        raise ValueError(f"{node.path} is out of the {node.kind} range: {value}")
    if node.allowed is not None and value not in node.allowed:
        raise ValueError(f"{node.path} must be one of {sorted(node.allowed)}, got {value!r}")
    return value


def _convert_object(nodes: tuple[_Node, ...], obj: dict[str, Any], path: str) -> dict[str, Any]:
    unknown = obj.keys() - {node.name for node in nodes}
    if unknown:
        raise ValueError(f"{path or 'event'} has properties the schema lacks: {sorted(unknown)}")
    out: dict[str, Any] = {}
    for node in nodes:
        if node.name in obj:
            out[node.name] = _convert(node, obj[node.name])
        elif node.required:
            raise ValueError(f"{node.path} is missing")
        else:
            out[node.name] = None
    return out


def _parse(jsonl: bytes) -> list[dict[str, Any]]:
    """Each line as a dict of Arrow column values, checked against the derived plan."""
    plan = _plan()
    partition = PARTITION_COLUMNS[0]
    rows = []
    for number, line in enumerate(_lines(jsonl), 1):
        try:
            event = orjson.loads(line)
            if not isinstance(event, dict):
                raise ValueError(f"expected a JSON object, got {type(event).__name__}")
            if partition not in event:
                raise ValueError(f"{partition} is missing")
            del event[partition]
            row = _convert_object(plan, event, "")
            for column, text_column in _TIMESTAMPS.items():
                text = row[column]
                row[column] = (datetime.fromisoformat(text) - _EPOCH) // _MILLISECOND
                row[text_column] = text
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            raise ValueError(f"audit event line {number}: {exc}") from exc
        rows.append(row)
    return rows


def _lines(jsonl: bytes) -> list[bytes]:
    """The lines of a segment, without the final newline or a blank trailing line."""
    lines = jsonl.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _fast_table(pa: Any, schema: Any, jsonl: bytes) -> Any:
    """The segment's table from the one-pass reader, or None if it does not vouch for every
    value (see ``exporters/_parquet_columns.py``)."""
    from exporters._parquet_columns import NotVouched, columns

    try:
        values = columns(_lines(jsonl))
        arrays = [pa.array(column, type=f.type) for column, f in zip(values, schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=schema)
    except (NotVouched, pa.ArrowException):
        return None


def _checked_table(pa: Any, schema: Any, jsonl: bytes) -> Any:
    """The segment's table, every value checked against the plan; ValueError names the first
    line that does not fit."""
    rows = _parse(jsonl)
    rows.sort(key=lambda row: tuple(row[column] for column in SORT_COLUMNS))
    try:
        arrays = [pa.array([row[f.name] for row in rows], type=f.type) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)
    except pa.ArrowException as exc:  # e.g. an integer out of the column's range
        raise ValueError(f"audit events do not fit the Parquet schema: {exc}") from exc


def encode_parquet(jsonl: bytes) -> bytes:
    """Parquet bytes of newline-delimited event dicts (an archive segment), sorted and zstd'd.

    A blank trailing line is ignored. Any other line that is not an event of the JSON Schema's
    shape raises ValueError naming its line number (missing or unknown keys, wrong types,
    nulls where the schema forbids them, const or enum values). The other constraints of the
    JSON Schema, such as patterns and lengths, are not checked, except the format of
    ``occurred_at``.
    """
    pa, _ = _pyarrow()
    schema = arrow_schema()
    table = _fast_table(pa, schema, jsonl)
    if table is None:  # the checking path: the same table, or the line that is wrong
        table = _checked_table(pa, schema, jsonl)
    return write_table(table)


def write_table(table: Any) -> bytes:
    """The Parquet bytes of a table of :func:`arrow_schema` whose rows are sorted by
    ``SORT_COLUMNS``, with the file layout described above (zstd, statistics, page index)."""
    pa, pq = _pyarrow()
    row_group_rows = table.num_rows
    if table.nbytes > _MAX_ROW_GROUP_BYTES:
        row_group_rows = max(1, table.num_rows * _MAX_ROW_GROUP_BYTES // table.nbytes)
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=max(1, row_group_rows),
        version="2.6",
        data_page_version="1.0",
        compression="zstd",
        compression_level=_ZSTD_LEVEL,
        use_dictionary=True,
        write_statistics=True,
        write_page_index=True,
        data_page_size=_DATA_PAGE_BYTES,
        sorting_columns=pq.SortingColumn.from_ordering(
            table.schema, [(name, "ascending") for name in SORT_COLUMNS]
        ),
    )
    body: bytes = sink.getvalue().to_pybytes()
    return body


# -- decoding ----------------------------------------------------------------------------------


def _restore(node: _Node, value: Any) -> Any:
    if value is None:
        return None
    if node.kind == "json":
        return orjson.loads(value)
    if node.kind == "struct":
        return _restore_object(node.children, value)
    return value


def _restore_object(nodes: tuple[_Node, ...], row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in nodes:
        value = row[node.name]
        if value is not None or node.required:  # absent optional properties stay absent
            out[node.name] = _restore(node, value)
    return out


def decode_parquet(data: bytes) -> list[dict[str, Any]]:
    """The event dicts of a file written by :func:`encode_parquet`, in its (sorted) row order.

    Each dict equals the original event without ``org_id``, which lives in the object's path.
    The keys of the JSON-string columns (``metadata`` and the others) come back sorted.
    ValueError if the file's schema is not :func:`arrow_schema`.
    """
    pa, pq = _pyarrow()
    schema = arrow_schema()
    table = pq.read_table(pa.BufferReader(data))
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"not an audit-event Parquet file of this schema version: {table.schema}")
    # Timestamps come back from their exact text; the millisecond column is not needed.
    return events_from_table(table.drop_columns(list(_TIMESTAMPS)))


def events_from_table(table: Any) -> list[dict[str, Any]]:
    """Event dicts from rows of the archive schema without the millisecond timestamp columns
    (``occurred_at`` is restored from its exact text, JSON-string columns are parsed)."""
    plan = _plan()
    events = []
    for row in table.to_pylist():
        for column, text_column in _TIMESTAMPS.items():
            row[column] = row.pop(text_column)
        events.append(_restore_object(plan, row))
    return events
