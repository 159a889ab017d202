"""Parquet archive encoding: schema derived from the JSON Schema, round trip, layout, readers."""

from __future__ import annotations

import copy
import importlib
import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware import (
    Actor,
    AuditEvent,
    ClientInfo,
    ErrorInfo,
    RequestInfo,
    Target,
    schema_path,
)
from audit_middleware._ids import format_timestamp, uuid7
from exporters import _parquet, _parquet_columns
from exporters._parquet import arrow_schema, decode_parquet, encode_parquet
from tests.conftest import MemoryAuditor, assert_valid

# Any-typed modules: pyarrow ships no type information. A missing package fails, never skips.
try:
    pa: Any = importlib.import_module("pyarrow")
    pq: Any = importlib.import_module("pyarrow.parquet")
    ds: Any = importlib.import_module("pyarrow.dataset")
except ImportError as exc:
    raise ImportError("the Parquet tests need pyarrow: pip install -e '.[dev]'") from exc

JSON_SCHEMA: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
BASE_NS = 1_780_000_000_123_456_789  # 2026-05-28T20:26:40.123456Z
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}


def _object_variant(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema of a property (inside ``oneOf [null, object]``), if it is one."""
    candidates: list[dict[str, Any]] = [spec, *spec.get("oneOf", [])]
    return next((c for c in candidates if c.get("type") == "object"), None)


def _event(
    offset_us: int,
    *,
    org: str | None = "org_a",
    action: str = "doc.updated",
    **fields: Any,
) -> AuditEvent:
    ns = BASE_NS + offset_us * 1000
    event = AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action=action,
        outcome=fields.pop("outcome", "success"),
        actor=fields.pop("actor", Actor("user_1", email="ana@example.com", name="Ana")),
        org_id=org,
        **fields,
    )
    assert_valid(event)
    return event


def _realistic() -> list[AuditEvent]:
    """Events covering every column: nulls, nested and unicode metadata, trace, error."""
    request = RequestInfo(
        id="req-1",
        method="POST",
        path="/orgs/org_a/api-keys",
        route="/orgs/{org_id}/api-keys",
        status=201,
        duration_ms=12.345678,
        completed=True,
        query={"expand": ["owner", "scopes"], "token": "[REDACTED]", "page": 2},
        headers={"user-agent": "curl/8.5", "x-request-id": "req-1"},
    )
    return [
        _event(
            2_000,
            action="org.api_key.created",
            target=Target("api_key", "key_123"),
            request=request,
            client=ClientInfo("203.0.113.7", "10.0.0.2", "curl/8.5"),
            metadata={
                "name": "CI key — déploiement 🚀",
                "scopes": ["read", "write"],
                "limits": {"rpm": 600, "burst": None, "ratio": 0.25, "on": True},
                "user.id": "dotted keys stay inside the JSON",
            },
            trace=TRACE,
        ),
        _event(
            0,
            org=None,
            action="user.login.failed",
            outcome="denied",
            actor=Actor(None, type="anonymous"),
            request=request._replace(
                id="req-2",
                method="POST",
                path="/auth/login",
                route=None,
                status=401,
                duration_ms=None,
                completed=None,
                query={},
                headers={},
            ),
            client=ClientInfo(None, None, None),
            metadata={"reason": "unknown_account", "email": "名前@example.jp"},
        ),
        _event(
            1,  # one microsecond later: same millisecond as the previous event
            action="billing.invoice.failed",
            outcome="error",
            actor=Actor("svc_billing", type="service"),
            target=Target("invoice", None),
            request=request._replace(id="req-3", status=500, completed=False),
            error=ErrorInfo("TimeoutError"),
            trace=TRACE,
            integrity={"stream": "host-1", "prev": "ab" * 32, "hash": "cd" * 32, "seq": 41},
        ),
        _event(
            7_000_000,
            action="user.password.changed",
            actor=Actor("user_2", type="api_key"),
            metadata={"nested": {"deeper": {"list": [1, 2.5, "x", None, {"k": "v"}]}}},
        ),
    ]


def _jsonl(events: list[AuditEvent]) -> bytes:
    """The exact bytes of an archive segment (see ``ArchiveExporter.export``)."""
    return b"".join(orjson.dumps(event.to_dict()) + b"\n" for event in events)


def _without_org(event: AuditEvent) -> dict[str, Any]:
    data = event.to_dict()
    del data["org_id"]
    return data


def _ms(text: str) -> int:
    """Milliseconds since the epoch, truncated (as the ``occurred_at`` column stores them)."""
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )


def _sort_key(event: AuditEvent) -> tuple[int, str]:
    return _ms(event.occurred_at), event.id


def _parquet_file(data: bytes) -> Any:
    return pq.ParquetFile(io.BytesIO(data))


# -- schema derivation -------------------------------------------------------------------------


def test_schema_covers_every_property_of_the_json_schema_but_the_partition_column() -> None:
    schema = arrow_schema()
    expected = [name for name in JSON_SCHEMA["properties"] if name != "org_id"]
    expected.insert(expected.index("occurred_at") + 1, "occurred_at_text")
    assert schema.names == expected  # adding a property to the JSON Schema shows up here
    assert "org_id" not in schema.names
    assert "dt" not in schema.names


def test_objects_with_fixed_properties_become_structs_of_exactly_those_properties() -> None:
    schema = arrow_schema()

    def check(spec: dict[str, Any], arrow_type: Any, path: str) -> None:
        variant = _object_variant(spec)
        if variant is None or "properties" not in variant:
            assert not pa.types.is_struct(arrow_type), path
            return
        assert pa.types.is_struct(arrow_type), path
        names = [arrow_type.field(i).name for i in range(arrow_type.num_fields)]
        assert names == list(variant["properties"]), path
        for name, child in variant["properties"].items():
            check(child, arrow_type.field(name).type, f"{path}.{name}")

    structs = []
    for name, spec in JSON_SCHEMA["properties"].items():
        if name != "org_id":
            check(spec, schema.field(name).type, name)
            if pa.types.is_struct(schema.field(name).type):
                structs.append(name)
    assert structs == ["actor", "target", "request", "client", "error", "trace", "integrity"]


@pytest.mark.parametrize(
    ("path", "arrow_type", "nullable"),
    [
        pytest.param("schema_version", "int32", False, id="schema_version"),
        pytest.param("id", "string", False, id="id"),
        pytest.param("occurred_at", "timestamp[ms, tz=UTC]", False, id="occurred_at"),
        pytest.param("occurred_at_text", "string", False, id="occurred_at_text"),
        pytest.param("outcome", "string", False, id="enum"),
        pytest.param("actor.id", "string", True, id="string-or-null"),
        pytest.param("actor.email", "string", True, id="optional-string"),
        pytest.param("target", "struct", True, id="nullable-struct"),
        pytest.param("request.status", "int32", True, id="status"),
        pytest.param("request.duration_ms", "double", True, id="number"),
        pytest.param("request.completed", "bool", True, id="boolean"),
        pytest.param("request.query", "json", False, id="query"),
        pytest.param("request.headers", "json", False, id="headers"),
        pytest.param("metadata", "json", False, id="metadata"),
        pytest.param("integrity", "struct", True, id="integrity"),
        pytest.param("integrity.seq", "int64", False, id="integrity-seq"),
        pytest.param("trace.trace_id", "string", False, id="trace-child"),
    ],
)
def test_column_types(path: str, arrow_type: str, nullable: bool) -> None:
    head, _, child = path.partition(".")
    field = arrow_schema().field(head)
    if child:
        field = field.type.field(child)
    if arrow_type == "json":
        assert str(field.type) == "string"
        assert field.metadata == {b"encoding": b"json"}
    elif arrow_type == "struct":
        assert pa.types.is_struct(field.type)
    else:
        assert str(field.type) == arrow_type
    assert field.nullable is nullable


def test_column_names_are_athena_safe() -> None:
    def names(fields: Any) -> list[str]:
        out = []
        for field in fields:
            out.append(field.name)
            if pa.types.is_struct(field.type):
                out += names(field.type)
        return out

    for name in names(arrow_schema()):
        assert name == name.lower()
        assert "." not in name


def _schema_with(**properties: Any) -> dict[str, Any]:
    schema = copy.deepcopy(JSON_SCHEMA)
    for name, spec in properties.items():
        if spec is None:
            del schema["properties"][name]
        else:
            schema["properties"][name] = spec
    return schema


def test_a_new_scalar_property_is_mapped_without_code_changes() -> None:
    schema = _schema_with(region={"type": ["string", "null"]})
    schema["required"].append("region")
    plan = _parquet._derive(schema)
    assert plan[-1].name == "region"
    assert plan[-1].kind == "string"
    assert plan[-1].nullable


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        pytest.param({"tags": {"type": "array"}}, "not supported", id="array"),
        pytest.param({"a_or_b": {"type": ["string", "integer"]}}, "union", id="union"),
        pytest.param(
            {"geo": {"type": "object", "properties": {"lat": {"type": "number"}}}},
            "additionalProperties",
            id="open-struct",
        ),
        pytest.param(
            {"region": {"type": ["string", "null"]}}, "absent vs null", id="optional-null"
        ),
        pytest.param({"user.id": {"type": "string"}}, "no dots", id="dotted-name"),
        pytest.param({"dt": {"type": "string"}}, "partition column", id="dt"),
        pytest.param({"org_id": None}, "org_id", id="no-org-id"),
        pytest.param({"occurred_at_text": {"type": "string"}}, "clash", id="text-clash"),
        pytest.param({"schema_version": {"const": "1"}}, "int32", id="int32-not-integer"),
    ],
)
def test_unmappable_json_schema_changes_fail_loudly(
    properties: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        _parquet._derive(_schema_with(**properties))


def test_an_override_naming_a_removed_property_fails_loudly() -> None:
    schema = _schema_with()
    schema["properties"]["request"]["oneOf"][1]["properties"].pop("status")
    with pytest.raises(RuntimeError, match=r"request\.status"):
        _parquet._derive(schema)


# -- round trip --------------------------------------------------------------------------------


def test_round_trip_of_realistic_events() -> None:
    events = _realistic()
    decoded = decode_parquet(encode_parquet(_jsonl(events)))
    assert decoded == [_without_org(e) for e in sorted(events, key=_sort_key)]
    # Absent optional properties stay absent; required nulls stay null.
    anonymous = next(e for e in decoded if e["actor"]["type"] == "anonymous")
    assert anonymous["actor"] == {"id": None, "type": "anonymous"}
    assert anonymous["request"]["route"] is None
    assert anonymous["target"] is None
    assert anonymous["trace"] is None
    assert all("org_id" not in e for e in decoded)


def test_round_trip_of_events_built_by_the_auditor(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    auditor.record("doc.shared", org_id="org_a", target=Target("doc", "d1"), metadata={"to": 3})
    auditor.record("user.login.failed", org_id=None, outcome="denied")
    auditor.record("org.member.removed", org_id="org_b", actor=Actor("u9", type="service"))
    events = auditor.wait_for(3)
    decoded = decode_parquet(encode_parquet(_jsonl(events)))
    assert decoded == [_without_org(e) for e in sorted(events, key=_sort_key)]


def test_json_columns_hold_compact_json_with_sorted_keys() -> None:
    event = _event(0, metadata={"b": 1, "a": {"d": 2, "c": "é"}})
    table = pq.read_table(io.BytesIO(encode_parquet(_jsonl([event]))))
    assert table.column("metadata").to_pylist() == ['{"a":{"c":"é","d":2},"b":1}']
    assert table.column("integrity").to_pylist() == [None]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata=st.dictionaries(st.text(st.characters(codec="utf-8")), json_values, max_size=5),
    name=st.text(st.characters(codec="utf-8"), max_size=40),
    offsets=st.lists(st.integers(0, 10**9), min_size=1, max_size=5),
)
def test_round_trip_of_arbitrary_metadata(
    metadata: dict[str, Any], name: str, offsets: list[int]
) -> None:
    events = [_event(offset, actor=Actor("u1", name=name), metadata=metadata) for offset in offsets]
    decoded = decode_parquet(encode_parquet(_jsonl(events)))
    assert decoded == [_without_org(e) for e in sorted(events, key=_sort_key)]


# -- timestamps, layout, metadata --------------------------------------------------------------


def test_timestamps_in_milliseconds_and_exact_text() -> None:
    events = _realistic()
    table = pq.read_table(io.BytesIO(encode_parquet(_jsonl(events))))
    assert table.schema.field("occurred_at").type == pa.timestamp("ms", tz="UTC")
    physical = _parquet_file(encode_parquet(_jsonl(events))).schema_arrow
    assert physical.field("occurred_at").type == pa.timestamp("ms", tz="UTC")
    ordered = sorted(events, key=_sort_key)
    assert table.column("occurred_at_text").to_pylist() == [e.occurred_at for e in ordered]
    for value, event in zip(table.column("occurred_at").to_pylist(), ordered, strict=True):
        exact = datetime.fromisoformat(event.occurred_at)
        assert value == exact.replace(microsecond=exact.microsecond // 1000 * 1000)
        assert value.tzinfo is not None
        assert value.utcoffset().total_seconds() == 0
    # Two events in the same millisecond, a microsecond apart: one ms value, two exact texts.
    first_two = table.slice(0, 2)
    assert set(first_two.column("occurred_at_text").to_pylist()) == {
        "2026-05-28T20:26:40.123456Z",
        "2026-05-28T20:26:40.123457Z",
    }
    assert (
        first_two.column("occurred_at").to_pylist()
        == [datetime(2026, 5, 28, 20, 26, 40, 123000, tzinfo=UTC)] * 2
    )


def test_zstd_statistics_dictionary_and_declared_sort_order() -> None:
    data = encode_parquet(_jsonl(_realistic()))
    metadata = _parquet_file(data).metadata
    assert metadata.num_row_groups == 1
    assert metadata.num_rows == 4
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    group = metadata.row_group(0)
    for i in range(group.num_columns):
        column = group.column(i)
        assert column.compression == "ZSTD"
        assert column.is_stats_set
    assert group.column(names.index("action")).has_dictionary_page
    assert [(s.column_index, s.descending) for s in group.sorting_columns] == [
        (names.index("occurred_at"), False),
        (names.index("id"), False),
    ]
    stats = group.column(names.index("occurred_at")).statistics
    assert stats.min == datetime(2026, 5, 28, 20, 26, 40, 123000, tzinfo=UTC)
    assert stats.max == datetime(2026, 5, 28, 20, 26, 47, 123000, tzinfo=UTC)
    assert metadata.metadata[b"audit_event_schema"] == JSON_SCHEMA["$id"].encode()


def test_rows_are_sorted_by_occurred_at_then_id() -> None:
    events = [_event(offset) for offset in (5_000, 0, 999, 3, 2_000_000, 1)]
    table = pq.read_table(io.BytesIO(encode_parquet(_jsonl(events[::-1]))))
    keys = list(
        zip(table.column("occurred_at").to_pylist(), table.column("id").to_pylist(), strict=True)
    )
    assert keys == sorted(keys)
    assert len(keys) == 6


def test_large_input_is_split_into_sorted_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_parquet, "_MAX_ROW_GROUP_BYTES", 4096)
    events = [_event(i * 1000, metadata={"pad": "x" * 200}) for i in range(60)]
    data = encode_parquet(_jsonl(events[::-1]))
    metadata = _parquet_file(data).metadata
    assert metadata.num_row_groups > 1
    assert all(metadata.row_group(i).sorting_columns for i in range(metadata.num_row_groups))
    assert decode_parquet(data) == [_without_org(e) for e in events]


# -- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail", [b"", b"\n", b"  \n", b"\r\n"], ids=["final-newline", "blank", "spaces", "crlf"]
)
def test_blank_trailing_line_is_tolerated(tail: bytes) -> None:
    events = _realistic()[:2]
    assert len(decode_parquet(encode_parquet(_jsonl(events) + tail))) == 2
    assert len(decode_parquet(encode_parquet(_jsonl(events).rstrip(b"\n")))) == 2


_DELETE = object()


def _line(**changes: Any) -> bytes:
    data = _realistic()[0].to_dict()
    for path, value in changes.items():
        target = data
        *parents, last = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return orjson.dumps(data)


MALFORMED = [
    pytest.param(b'{"schema_version": 1, "id": "x"', "line 2", id="truncated"),
    pytest.param(b"not json", "line 2", id="garbage"),
    pytest.param(b"[1, 2]", "JSON object", id="array"),
    pytest.param(b"", "line 2", id="blank-line-in-the-middle"),
    pytest.param(_line(action=_DELETE), "action is missing", id="missing"),
    pytest.param(_line(org_id=_DELETE), "org_id is missing", id="missing-org"),
    pytest.param(_line(region="eu"), "region", id="unknown-key"),
    pytest.param(_line(actor__nickname="x"), "nickname", id="unknown-nested-key"),
    pytest.param(_line(request__status="201"), r"request\.status", id="wrong-type"),
    pytest.param(_line(request__completed=1), "request.completed", id="int-for-bool"),
    pytest.param(_line(request__status=True), "request.status", id="bool-for-int"),
    pytest.param(_line(request__status=2**40), "int32 range", id="int32-overflow"),
    pytest.param(_line(id=None), "id must not be null", id="null"),
    pytest.param(_line(actor__email=None), "email must not be null", id="null-optional"),
    pytest.param(_line(schema_version=2), "schema_version", id="other-version"),
    pytest.param(_line(outcome="maybe"), "outcome", id="enum"),
    pytest.param(_line(metadata=[1]), "metadata must be an object", id="metadata"),
    pytest.param(_line(target="doc"), "target must be an object", id="struct"),
    pytest.param(_line(occurred_at="2026-05-28 20:26:40Z"), "occurred_at", id="timestamp"),
    pytest.param(_line(occurred_at="2026-13-28T20:26:40.000000Z"), "month", id="impossible-date"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_malformed_line_raises_value_error(line: bytes, message: str) -> None:
    jsonl = _jsonl(_realistic()[:1]) + line + b"\n" + _jsonl(_realistic()[1:2])
    with pytest.raises(ValueError, match=message):
        encode_parquet(jsonl)


# -- the one-pass reader (exporters/_parquet_columns.py) against the checking path ---------------


def _tables(jsonl: bytes) -> tuple[Any, Any]:
    """The one-pass reader's table (None where it declined) and the checking path's (None
    where it raised ValueError)."""
    schema = arrow_schema()
    fast = _parquet._fast_table(pa, schema, jsonl)
    try:
        checked = _parquet._checked_table(pa, schema, jsonl)
    except ValueError:
        checked = None
    return fast, checked


def test_the_one_pass_reader_makes_the_checked_table() -> None:
    events = _realistic()
    for order in (events, events[::-1]):  # sorted alike when the lines are out of order
        fast, checked = _tables(_jsonl(order))
        assert fast is not None
        assert checked is not None
        assert fast.equals(checked, check_metadata=True)


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_the_one_pass_reader_declines_every_malformed_line(line: bytes, message: str) -> None:
    jsonl = _jsonl(_realistic()[:1]) + line + b"\n" + _jsonl(_realistic()[1:2])
    fast, checked = _tables(jsonl)
    assert checked is None
    assert fast is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metadata=st.dictionaries(st.text(st.characters(codec="utf-8")), json_values, max_size=5),
    offsets=st.lists(st.integers(0, 10**12), min_size=1, max_size=6),
)
def test_the_one_pass_reader_accepts_arbitrary_metadata(
    metadata: dict[str, Any], offsets: list[int]
) -> None:
    events = [_event(offset, metadata=metadata) for offset in offsets]
    fast, checked = _tables(_jsonl(events))
    assert fast is not None
    assert checked is not None
    assert fast.equals(checked, check_metadata=True)


_odd_values = (
    json_values
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(
        [
            "success",
            "denied",
            "anonymous",
            "2026-05-28T20:26:40.123456Z",
            "2026-02-30T20:26:40.123456Z",
            "2026-05-28T20:26:60.123456Z",
            "2026-05-28 20:26:40.123456Z",
            1,
            2**31,
            -(2**31) - 1,
            1.0,
            True,
            {},
        ]
    )
)


def _dict_paths(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of ``value`` that goes through dicts only."""
    paths = []
    for key, item in value.items():
        paths.append((*prefix, key))
        if isinstance(item, dict):
            paths.extend(_dict_paths(item, (*prefix, key)))
    return paths


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_one_pass_reader_never_accepts_what_the_checking_path_refuses(
    data: st.DataObject,
) -> None:
    """Values changed, removed or added anywhere in an event: wherever the checking path
    raises, the one-pass reader declined; wherever both accept, their tables are equal."""
    events = [event.to_dict() for event in _realistic()]
    event = copy.deepcopy(data.draw(st.sampled_from(events)))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_dict_paths(event)))
        parent = event
        for key in path[:-1]:
            parent = parent[key]
        change = data.draw(st.sampled_from(["set", "remove", "add"]))
        if change == "set":
            parent[path[-1]] = data.draw(_odd_values)
        elif change == "remove":
            del parent[path[-1]]
        else:
            parent[data.draw(st.text(max_size=8))] = data.draw(_odd_values)
        if not _dict_paths(event):
            break
    jsonl = b"".join(orjson.dumps(e) + b"\n" for e in (events[0], event, events[1]))
    fast, checked = _tables(jsonl)
    if checked is None:
        assert fast is None
    elif fast is not None:
        assert fast.equals(checked, check_metadata=True)


def test_empty_input_is_a_valid_file_without_rows() -> None:
    data = encode_parquet(b"")
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 0
    assert table.schema.equals(arrow_schema())
    assert decode_parquet(data) == []
    assert decode_parquet(encode_parquet(b"\n")) == []


def test_decode_rejects_a_foreign_parquet_file() -> None:
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": ["a"]}), sink)
    with pytest.raises(ValueError, match="schema version"):
        decode_parquet(sink.getvalue())


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    hint = r"pip install 'audit-log-middleware\[parquet\]'"
    with pytest.raises(ImportError, match=hint):
        arrow_schema()
    with pytest.raises(ImportError, match=hint):
        encode_parquet(b"")
    with pytest.raises(ImportError, match=hint):
        decode_parquet(b"")


# -- readers over a Hive-partitioned layout ----------------------------------------------------


def _write_partitions(root: Path) -> dict[str, list[AuditEvent]]:
    by_org = {
        "org_a": [_event(offset, org="org_a") for offset in (3_000, 1_000)],
        "org_b": [_event(offset, org="org_b", metadata={"k": "b"}) for offset in (2_000,)],
    }
    for org, events in by_org.items():
        day = events[0].occurred_at[:10]
        directory = root / f"org_id={org}" / f"dt={day}"
        directory.mkdir(parents=True)
        (directory / "part.parquet").write_bytes(encode_parquet(_jsonl(events)))
    return by_org


def test_readable_as_a_hive_partitioned_dataset(tmp_path: Path) -> None:
    by_org = _write_partitions(tmp_path)
    dataset = ds.dataset(tmp_path, format="parquet", partitioning="hive")
    table = dataset.to_table(filter=ds.field("org_id") == "org_a").sort_by(
        [("occurred_at", "ascending"), ("id", "ascending")]
    )
    expected = sorted(by_org["org_a"], key=_sort_key)
    assert table.column("id").to_pylist() == [e.id for e in expected]
    assert set(table.column("org_id").to_pylist()) == {"org_a"}
    assert set(table.column("dt").to_pylist()) == {"2026-05-28"}
    assert table.column("occurred_at_text").to_pylist() == [e.occurred_at for e in expected]
    assert dataset.count_rows() == 3


def test_readable_by_duckdb_with_hive_partitioning(tmp_path: Path) -> None:
    try:
        duckdb: Any = importlib.import_module("duckdb")
    except ImportError as exc:
        raise ImportError("this test needs duckdb: pip install -e '.[dev]'") from exc
    by_org = _write_partitions(tmp_path)
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT id, org_id, dt, occurred_at_text, epoch_ms(occurred_at),"
            " metadata->>'k', actor.type, request"
            " FROM read_parquet(?, hive_partitioning = true)"
            " WHERE org_id = ? ORDER BY occurred_at, id",
            [str(tmp_path / "*" / "*" / "*.parquet"), "org_b"],
        ).fetchall()
    (event,) = by_org["org_b"]
    assert [tuple(str(v) for v in row[:3]) for row in rows] == [(event.id, "org_b", "2026-05-28")]
    assert rows[0][3:] == (event.occurred_at, _ms(event.occurred_at), "b", "user", None)


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
)
def test_the_one_pass_reader_computes_milliseconds_as_the_checking_path(moment: datetime) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    if len(text) != 27:  # years before 1000: strftime does not pad them everywhere
        text = f"{moment.year:04d}" + text[text.index("-") :]
    assert _parquet_columns._milliseconds([text]) == [_ms(text)]


@pytest.mark.parametrize(
    "text",
    [
        "2026-05-28T20:26:40.123456+00:00",  # an offset
        "2026-05-28T20:26:40.123Z",  # three digits
        "2026-05-28T20:26:40Z",  # none
        "2026-05-28T20:26:40.12345٦Z",  # a digit that is not ASCII
    ],
)
def test_the_one_pass_reader_leaves_other_timestamp_layouts_to_the_checking_path(
    text: str,
) -> None:
    with pytest.raises(_parquet_columns.NotVouched):
        _parquet_columns._milliseconds([text])
