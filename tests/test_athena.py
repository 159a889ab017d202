"""Athena DDL and the Athena reader (``audit_middleware.athena``).

Athena itself cannot run here. What is checked instead:

* every generated DDL statement parses with sqlglot's Athena and Hive dialects, and its columns
  are compared with the published JSON Schema and with ``exporters._parquet.arrow_schema()``;
* the reader's calls are captured with a stub client that records the boto3 kwargs (paging,
  FAILED/CANCELLED, timeouts, the bytes-scanned tripwire, hostile filter values);
* the reader runs end to end against moto's Athena mock over HTTP, which executes no SQL but
  returns canned results (row mapping, header row, polling);
* the SELECT text runs through DuckDB over a real JSON-lines archive written by
  ``ArchiveExporter``, with DuckDB binding the parameters. Two shims stand in for what the
  dialects do not share: the table is a DuckDB view that takes ``org_id``/``dt`` from the
  object path (Athena's partition projection), and ``json_format`` is a DuckDB macro casting
  JSON to text (Athena's ``json_format(CAST(x AS JSON))``). The WHERE, ORDER BY and LIMIT
  clauses run unchanged.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from audit_middleware import Actor, AuditEvent, Auditor, Target, load_schema
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.athena import (
    AthenaEngine,
    AthenaQueryError,
    columns,
    ddl,
    select_statement,
)
from audit_middleware.cli import main
from exporters._parquet import arrow_schema
from exporters.archive import ArchiveExporter
from tests.s3_server import CREDENTIALS, S3Endpoint

LOCATION = "s3://audit-bucket/audit/"
VARIANTS = [
    ("jsonl", "injected", ()),
    ("jsonl", "enum", ("acme", "org-2")),
    ("parquet", "injected", ()),
    ("parquet", "enum", ("acme", "org-2")),
]
HOSTILE = ["'", "' OR '1'='1", "--", "x; DROP TABLE t; --", "*", "../", "a\x00b", "é" * 10_000]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse(sql: str, dialect: str) -> exp.Create:
    tree = sqlglot.parse_one(sql, read=dialect, error_level=sqlglot.ErrorLevel.RAISE)
    assert isinstance(tree, exp.Create), type(tree)
    return tree


def _column_defs(tree: exp.Create) -> dict[str, str]:
    schema = tree.this
    assert isinstance(schema, exp.Schema)
    return {
        col.name: col.args["kind"].sql(dialect="hive").lower()
        for col in schema.expressions
        if isinstance(col, exp.ColumnDef)
    }


def _properties(tree: exp.Create) -> dict[str, str]:
    props = tree.args["properties"]
    out: dict[str, str] = {}
    for prop in props.expressions:
        if type(prop) is exp.Property and isinstance(prop.this, exp.Literal):
            out[prop.this.this] = prop.args["value"].this
    return out


# -- DDL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "projection", "orgs"), VARIANTS)
@pytest.mark.parametrize("dialect", ["athena", "hive"])
def test_ddl_parses_and_has_every_schema_property(
    fmt: Any, projection: Any, orgs: Sequence[str], dialect: str
) -> None:
    sql = ddl("audit_events", LOCATION, format=fmt, org_projection=projection, orgs=orgs)
    tree = _parse(sql, dialect)
    assert tree.args.get("exists")
    defs = _column_defs(tree)
    expected = [name for name in load_schema()["properties"] if name != "org_id"]
    assert [name for name in defs if name != "occurred_at_text"] == expected
    assert "org_id" not in defs
    assert "." not in "".join(defs)
    text = tree.sql(dialect="hive")
    assert "PARTITIONED BY (`org_id` STRING, `dt` STRING)" in text
    if fmt == "jsonl":
        assert "org.apache.hive.hcatalog.data.JsonSerDe" in sql
        assert defs["occurred_at"] == "string"
    else:
        assert "STORED AS PARQUET" in sql
        assert defs["occurred_at"] == "timestamp"
        assert defs["occurred_at_text"] == "string"


@pytest.mark.parametrize(("fmt", "projection", "orgs"), VARIANTS)
def test_ddl_projection_properties(fmt: Any, projection: Any, orgs: Sequence[str]) -> None:
    sql = ddl(
        "audit_events",
        LOCATION,
        format=fmt,
        org_projection=projection,
        orgs=orgs,
        projection_start="2026-03-01",
    )
    props = _properties(_parse(sql, "athena"))
    assert props["projection.enabled"] == "true"
    assert props["projection.org_id.type"] == projection
    if projection == "enum":
        assert props["projection.org_id.values"] == ",".join(orgs)
    else:
        assert "projection.org_id.values" not in props
    assert props["projection.dt.type"] == "date"
    assert props["projection.dt.format"] == "yyyy-MM-dd"
    assert props["projection.dt.range"] == "2026-03-01,NOW"
    assert props["projection.dt.interval"] == "1"
    assert props["projection.dt.interval.unit"] == "DAYS"
    assert props["storage.location.template"] == LOCATION + "org_id=${org_id}/dt=${dt}/"


def _arrow_to_hive(pa_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_struct(pa_type):
        inner = ",".join(f"{f.name}:{_arrow_to_hive(f.type)}" for f in pa_type)
        return f"struct<{inner}>"
    if pa.types.is_timestamp(pa_type):
        assert pa_type.unit == "ms"
        return "timestamp"
    simple = {
        pa.string(): "string",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float64(): "double",
        pa.bool_(): "boolean",
    }
    return simple[pa_type]


def test_parquet_ddl_matches_the_arrow_schema() -> None:
    schema = arrow_schema()
    assert columns("parquet") == [(f.name, _arrow_to_hive(f.type)) for f in schema]
    defs = _column_defs(_parse(ddl("t", LOCATION, format="parquet"), "athena"))
    assert list(defs) == schema.names


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"table": "Bad"}, "table"),
        ({"table": "t; drop"}, "table"),
        ({"location": "s3://b/x'; --"}, "location"),
        ({"location": "https://b/x"}, "location"),
        ({"projection_start": "2026-02-30"}, "day"),
        ({"org_projection": "enum"}, "needs at least one org"),
        ({"org_projection": "enum", "orgs": ["a',b"]}, "org id"),
        ({"orgs": ["acme"]}, "only for"),
        ({"format": "csv"}, "format"),
    ],
)
def test_ddl_rejects_bad_input(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"table": "t", "location": LOCATION, "format": "jsonl"} | kwargs
    with pytest.raises(ValueError, match=message):
        ddl(args.pop("table"), args.pop("location"), **args)


def test_cli_prints_the_ddl(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["athena", "ddl", "--table", "audit_events", "--location", LOCATION]
    argv += ["--format", "parquet", "--org-projection", "enum", "--org", "acme", "--org", "b2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = ddl(
        "audit_events", LOCATION, format="parquet", org_projection="enum", orgs=["acme", "b2"]
    )
    assert out == expected + "\n"
    assert main(["athena", "ddl", "--table", "x'", "--location", LOCATION]) == 2
    assert "table must match" in capsys.readouterr().err


# -- the reader with a stub client ---------------------------------------------------------------


class StubAthena:
    """Records every call's kwargs; answers from scripted states and result pages."""

    def __init__(
        self,
        states: Sequence[dict[str, Any]] = ({"State": "SUCCEEDED"},),
        pages: Sequence[dict[str, Any]] = (),
        scanned: int = 0,
    ) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.states = list(states)
        self.pages = list(pages) or [{"ResultSet": {"Rows": [], "ResultSetMetadata": {}}}]
        self.scanned = scanned

    def start_query_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("start", kwargs))
        return {"QueryExecutionId": "q1"}

    def get_query_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get", kwargs))
        status = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        stats = {"DataScannedInBytes": self.scanned}
        return {"QueryExecution": {"Status": status, "Statistics": stats}}

    def get_query_results(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("results", kwargs))
        return self.pages.pop(0)

    def stop_query_execution(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("stop", kwargs))
        return {}


def _engine(stub: StubAthena, **options: Any) -> tuple[AthenaEngine, list[float]]:
    sleeps: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    engine = AthenaEngine(
        "audit", "wg", "s3://results/", client=stub, sleep=sleep, clock=lambda: now[0], **options
    )
    return engine, sleeps


def _row(values: Sequence[str | None]) -> dict[str, Any]:
    return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}


def _result_row(event: dict[str, Any]) -> list[str | None]:
    """An event as Athena returns it for the JSON-lines table's SELECT (text cells)."""
    cells: list[str | None] = []
    for name in NAMES:
        value = event[name]
        if value is None:
            cells.append(None)
        elif isinstance(value, dict):
            cells.append(json.dumps(value))
        else:
            cells.append(str(value))
    return cells


NAMES = [name for name, _ in columns("jsonl")]
INFO = [{"Name": name, "Type": "varchar"} for name in NAMES]


def _sample(i: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "id": f"0190a000-0000-7000-8000-{i:012d}",
        "occurred_at": f"2026-11-01T10:00:{i % 60:02d}.000001Z",
        "action": "doc.updated",
        "outcome": "success",
        "actor": {"id": "u1", "type": "user", "email": "u@example.com"},
        "target": {"type": "doc", "id": None},
        "request": None,
        "client": {"ip": "192.0.2.1", "peer": None, "user_agent": "ua"},
        "error": None,
        "metadata": {"k": "v"},
        "trace": None,
        "integrity": None,
    }


def test_hostile_values_only_travel_as_parameters() -> None:
    stub = StubAthena()
    engine, _ = _engine(stub)
    engine.get_audit_logs("audit_events", "acme")
    baseline = stub.calls[0][1]["QueryString"]
    for value in HOSTILE:
        stub = StubAthena()
        engine, _ = _engine(stub)
        if "\x00" in value or len(value) > 1024:
            with pytest.raises(ValueError, match=r"NUL|longer"):
                engine.get_audit_logs("audit_events", "acme", actor=value)
            assert stub.calls == []
            continue
        engine.get_audit_logs("audit_events", "acme", actor=value, action=value, outcome=value)
        kwargs = stub.calls[0][1]
        assert kwargs["QueryString"] == baseline
        params = kwargs["ExecutionParameters"]
        quoted = "'" + value.replace("'", "''") + "'"
        assert params.count(quoted) == 7  # 3 actor + 2 exact action + 2 outcome
        assert all(p.startswith("'") and p.endswith("'") for p in params)
        unquoted = [p[1:-1].replace("''", "'") for p in params]
        assert unquoted[4:] == [value] * 5 + ["", ""] + [value] * 2
        assert kwargs["QueryExecutionContext"] == {"Database": "audit"}
        assert kwargs["WorkGroup"] == "wg"
        assert kwargs["ResultConfiguration"] == {"OutputLocation": "s3://results/"}


@pytest.mark.parametrize("org", ["a'b", "a b", "../x", "_global", "", "x" * 129, "ü"])
def test_org_ids_outside_the_literal_charset_are_refused(org: str) -> None:
    stub = StubAthena()
    engine, _ = _engine(stub)
    with pytest.raises(ValueError, match="org id"):
        engine.get_audit_logs("audit_events", org)
    assert stub.calls == []


def test_paging_row_mapping_and_backoff() -> None:
    events = [_sample(i) for i in range(5)]
    header = _row(NAMES)
    pages: list[dict[str, Any]] = [
        {
            "ResultSet": {"Rows": [header, *map(_row, map(_result_row, events[:2]))]},
            "NextToken": "t1",
        },
        {"ResultSet": {"Rows": [_row(_result_row(e)) for e in events[2:4]]}, "NextToken": "t2"},
        {"ResultSet": {"Rows": [_row(_result_row(events[4]))]}},
    ]
    for page in pages:
        page["ResultSet"]["ResultSetMetadata"] = {"ColumnInfo": INFO}
    states = [{"State": "QUEUED"}, *[{"State": "RUNNING"}] * 5, {"State": "SUCCEEDED"}]
    stub = StubAthena(states=states, pages=pages)
    engine, sleeps = _engine(stub, poll_initial=0.5, poll_max=2.0)
    got = engine.get_audit_logs("audit_events", "acme", limit=5)
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    tokens = [kw.get("NextToken") for name, kw in stub.calls if name == "results"]
    assert tokens == [None, "t1", "t2"]
    expected = []
    for event in events:
        want = dict(event, org_id="acme")
        want["target"] = {"type": "doc", "id": None}
        expected.append(want)
    assert got == expected
    assert got[0]["actor"] == {"id": "u1", "type": "user", "email": "u@example.com"}
    assert got[0]["schema_version"] == 1


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED"])
def test_failed_query_raises_with_the_reason(state: str) -> None:
    reason = "SYNTAX_ERROR: line 1:8: Column 'x' cannot be resolved"
    stub = StubAthena(states=[{"State": "RUNNING"}, {"State": state, "StateChangeReason": reason}])
    engine, _ = _engine(stub)
    with pytest.raises(AthenaQueryError, match=f"{state}: SYNTAX_ERROR") as info:
        engine.get_audit_logs("audit_events", "acme")
    assert info.value.query_execution_id == "q1"


def test_timeout_cancels_the_query() -> None:
    stub = StubAthena(states=[{"State": "RUNNING"}])
    engine, sleeps = _engine(stub, timeout=3, poll_initial=1.0, poll_max=1.0)
    with pytest.raises(AthenaQueryError, match="still RUNNING after 3 s"):
        engine.get_audit_logs("audit_events", "acme")
    assert sum(sleeps) == 3
    assert stub.calls[-1] == ("stop", {"QueryExecutionId": "q1"})


def test_bytes_scanned_tripwire() -> None:
    engine, _ = _engine(StubAthena(scanned=10_001), max_bytes_scanned=10_000)
    with pytest.raises(AthenaQueryError, match="BytesScannedCutoffPerQuery"):
        engine.get_audit_logs("audit_events", "acme")
    engine, _ = _engine(StubAthena(scanned=10_000), max_bytes_scanned=10_000)
    assert engine.get_audit_logs("audit_events", "acme") == []


def test_parquet_select_uses_the_exact_text_column() -> None:
    statement = select_statement("t", "acme", format="parquet", since="2026-11-01T00:00:00Z")
    assert '"occurred_at_text" AS "occurred_at"' in statement.sql
    assert 'ORDER BY "occurred_at_text" DESC, "id" DESC' in statement.sql
    assert statement.values[2] == "2026-11-01T00:00:00.000000Z"
    assert 'json_format(CAST("metadata"' not in statement.sql  # already JSON text
    for dialect in ("athena", "trino"):
        sqlglot.parse_one(statement.sql, read=dialect, error_level=sqlglot.ErrorLevel.RAISE)


# -- moto's Athena mock over HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[S3Endpoint]:
    endpoint = S3Endpoint()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _queue_results(endpoint: S3Endpoint, rows: list[dict[str, Any]]) -> None:
    body = json.dumps({"results": [{"rows": rows, "column_info": INFO}]}).encode()
    request = urllib.request.Request(
        endpoint.url + "/moto-api/static/athena/query-results",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


def test_against_moto_athena(moto_endpoint: S3Endpoint) -> None:
    import boto3

    client = boto3.client("athena", endpoint_url=moto_endpoint.url, **CREDENTIALS)
    events = [_sample(1), _sample(2)]
    _queue_results(moto_endpoint, [_row(NAMES), *(_row(_result_row(e)) for e in events)])
    engine = AthenaEngine(
        "audit", output_location="s3://results/", client=client, poll_initial=0.01
    )
    got = engine.get_audit_logs("audit_events", "acme", actor="u'1", limit=2)
    assert [e["id"] for e in got] == [e["id"] for e in events]
    assert got[0]["metadata"] == {"k": "v"}
    assert got[0]["org_id"] == "acme"
    assert "email" in got[0]["actor"]
    # moto executes no SQL: with nothing queued the result is empty.
    assert engine.get_audit_logs("audit_events", "acme") == []


# -- the SELECT through DuckDB over a real archive -----------------------------------------------


def _event(org: str, at: datetime, action: str, actor: str, outcome: str) -> AuditEvent:
    ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    return AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
        actor=Actor(actor, email=f"{actor}@example.com"),
        org_id=org,
        target=Target("doc", "d1"),
        client=None,
        error=None,
    )


def test_select_runs_in_duckdb_over_a_jsonl_archive(tmp_path: Path) -> None:
    import duckdb

    day0 = datetime(2026, 11, 1, 10, tzinfo=UTC)
    events = [
        _event(
            "acme" if i % 3 else "other",
            day0 + timedelta(hours=7 * i, microseconds=i),
            "user.login" if i % 2 else "doc.updated",
            f"u{i % 4}",
            "success" if i % 5 else "denied",
        )
        for i in range(40)
    ]
    archive = ArchiveExporter(str(tmp_path), format="jsonl")
    auditor = Auditor(exporters=[archive], batch_interval=0.005, environ={})
    try:
        for item in events:
            assert auditor.pipeline.submit(item)
        assert auditor.force_flush(timeout=10)
    finally:
        auditor.shutdown(timeout=5)

    con = duckdb.connect()
    con.execute("CREATE MACRO json_format(j) AS CAST(j AS VARCHAR)")
    pattern = str(tmp_path / "**" / "*.jsonl.gz").replace("'", "''")
    con.execute(
        "CREATE VIEW audit_events AS SELECT * REPLACE "
        "(regexp_extract(filename, 'org_id=([^/]+)', 1) AS org_id), "
        "regexp_extract(filename, 'dt=([^/]+)', 1) AS dt "
        f"FROM read_json('{pattern}', filename = true, format = 'newline_delimited', "
        "columns = {id: 'VARCHAR', occurred_at: 'VARCHAR', action: 'VARCHAR', "
        "outcome: 'VARCHAR', org_id: 'VARCHAR', schema_version: 'INTEGER', "
        "actor: 'STRUCT(id VARCHAR, type VARCHAR, email VARCHAR, name VARCHAR)', "
        "target: 'JSON', request: 'JSON', client: 'JSON', error: 'JSON', metadata: 'JSON', "
        "trace: 'JSON', integrity: 'JSON'})"
    )
    cases: list[dict[str, Any]] = [
        {},
        {"actor": "u1"},
        {"actor": "u2@example.com"},
        {"action": "user.login"},
        {"action": "user.*"},
        {"outcome": "denied"},
        {"since": day0 + timedelta(days=2), "until": day0 + timedelta(days=5)},
        {"actor": "' OR '1'='1"},
        {"action": "--"},
    ]
    nonempty = 0
    for filters in cases:
        statement = select_statement("audit_events", "acme", limit=7, **filters)
        rows = con.execute(statement.sql, list(statement.values)).fetchall()
        names = [d[0] for d in con.description or ()]
        got = [dict(zip(names, row, strict=True))["id"] for row in rows]

        def keep(e: AuditEvent, f: dict[str, Any] = filters) -> bool:
            if e.org_id != "acme":
                return False
            if "actor" in f and f["actor"] not in (e.actor.id, e.actor.email):
                return False
            action = f.get("action")
            if action is not None and not (
                e.action.startswith(action[:-1]) if action.endswith(".*") else e.action == action
            ):
                return False
            if "outcome" in f and e.outcome != f["outcome"]:
                return False
            at = datetime.fromisoformat(e.occurred_at)
            since: datetime = f.get("since", at)
            until: datetime = f.get("until", at + timedelta(1))
            return since <= at < until

        expected = sorted((e for e in events if keep(e)), key=lambda e: (e.occurred_at, e.id))
        assert got == [e.id for e in reversed(expected)][:7], filters
        nonempty += bool(got)
        assert all(json.loads(row[names.index("actor")])["type"] == "user" for row in rows)
    assert nonempty == len(cases) - 2  # only the two hostile filters match nothing
