"""Athena's SQL text, run by DuckDB on the same archive files, agrees with both engines.

``athena.select_statement`` produces the query Athena runs. Here the *unchanged* text runs in
DuckDB after this documented translation (docs/query.md, "Athena and DuckDB"):

1. the table ``"audit_events"`` is a DuckDB view over the same archive files, with ``org_id``
   and ``dt`` as the raw path segments (strings, as Athena's partition projection gives them);
2. ``json_format(x)`` is a DuckDB macro, ``CAST(x AS VARCHAR)`` (``CAST(... AS JSON)`` exists in
   both dialects);
3. the ``?`` placeholders are bound in order to the raw ``SelectStatement.values`` (Athena
   gets the same values as quoted literals in ``ExecutionParameters``).

The rows must be the same events, in the same order, as ``ArchiveReader`` and ``DuckDBEngine``
return (the archive holds no redelivered duplicates: Athena's SELECT does not de-duplicate).
Every statement is parsed by sqlglot with the Athena and Trino dialects too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlglot
from sqlglot import exp

from audit_middleware import AuditEvent
from audit_middleware.athena import SelectStatement, select_statement
from audit_middleware.duckdb_engine import DuckDBEngine
from audit_middleware.query import ArchiveReader
from tests.test_query import event, write

DAY0 = datetime(2026, 11, 1, 9, tzinfo=UTC)
ORGS = ("acme", "globex", "acme-corp")
ACTIONS = ("user.login", "user.login.failed", "doc.updated", "doc.shared", "org.api_key.created")
OUTCOMES = ("success", "denied", "failure", "error")


def sample() -> list[AuditEvent]:
    events = []
    for i in range(90):
        events.append(
            event(
                ORGS[i % 3] if i % 7 else "acme",
                DAY0 + timedelta(hours=5 * i, microseconds=i % 4),
                action=ACTIONS[i % 5],
                outcome=OUTCOMES[(i // 5) % 4],
                actor=f"u{i % 4}",
                email=f"u{i % 4}@example.com" if i % 2 else None,
                ip=f"203.0.113.{i % 3}",
            )
        )
    return events


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    events = sample()
    out = {}
    for fmt in ("jsonl", "parquet"):
        root = tmp_path_factory.mktemp(fmt) / "archive"
        write(root, events, fmt, max_events=7)
        out[fmt] = root
    return out


def duckdb_for_athena(root: Path, fmt: str) -> Any:
    """A DuckDB connection where ``"audit_events"`` is the Athena table over ``root``'s files."""
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE MACRO json_format(j) AS CAST(j AS VARCHAR)")
    path = "regexp_extract(filename, '/org_id=([^/]+)/dt=([^/]+)/[^/]+$', {})"
    partitions = f"{path.format(1)} AS org_id, {path.format(2)} AS dt"
    suffix = "*.parquet" if fmt == "parquet" else "*.jsonl.gz"
    # The test's own temporary paths (DDL cannot take parameters), quoted as literals.
    files = (
        "["
        + ", ".join("'" + str(p).replace("'", "''") + "'" for p in sorted(root.rglob(suffix)))
        + "]"
    )
    if fmt == "parquet":
        con.execute(
            f"CREATE VIEW audit_events AS SELECT * EXCLUDE (filename), {partitions} "
            f"FROM read_parquet({files}, filename = true, hive_partitioning = false)"
        )
    else:
        columns = (
            "{schema_version: 'INTEGER', id: 'VARCHAR', occurred_at: 'VARCHAR', "
            "action: 'VARCHAR', outcome: 'VARCHAR', org_id: 'VARCHAR', "
            "actor: 'STRUCT(id VARCHAR, type VARCHAR, email VARCHAR, name VARCHAR)', "
            "target: 'JSON', request: 'JSON', client: 'JSON', error: 'JSON', "
            "metadata: 'JSON', trace: 'JSON', integrity: 'JSON'}"
        )
        con.execute(  # the row's own org_id is replaced by the path's, as in Athena
            f"CREATE VIEW audit_events AS SELECT * EXCLUDE (filename, org_id), {partitions} "
            f"FROM read_json({files}, filename = true, format = 'newline_delimited', "
            f"columns = {columns})"
        )
    return con


def run(con: Any, statement: SelectStatement) -> list[dict[str, Any]]:
    cursor = con.execute(statement.sql, list(statement.values))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


CASES: list[dict[str, Any]] = [
    {},
    {"actor": "u1"},
    {"actor": "u3@example.com"},
    {"action": "user.login"},
    {"action": "user.login.*"},
    {"action": "doc.*", "outcome": "success"},
    {"outcome": "denied"},
    {"since": DAY0 + timedelta(days=3), "until": DAY0 + timedelta(days=9, hours=2)},
    {"since": "2026-11-05T00:00:00+02:00", "actor": "u2"},
    {"until": DAY0 + timedelta(days=4)},
    {"actor": "' OR '1'='1"},
    {"action": "--"},
    {"actor": "u1'; DROP VIEW audit_events; --"},
]


def parse(sql: str, dialect: str) -> exp.Select:
    tree = sqlglot.parse_one(sql, read=dialect)
    assert isinstance(tree, exp.Select), dialect
    return tree


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_athena_sql_in_duckdb_agrees_with_both_engines(
    archives: dict[str, Path], fmt: Literal["jsonl", "parquet"]
) -> None:
    root = archives[fmt]
    con = duckdb_for_athena(root, fmt)
    reader, engine = ArchiveReader(str(root)), DuckDBEngine(str(root))
    nonempty = 0
    for org in ORGS:
        for filters in CASES:
            for limit in (1, 5, 100):
                statement = select_statement(
                    "audit_events", org, format=fmt, limit=limit, **filters
                )
                for dialect in ("athena", "trino"):
                    tree = parse(statement.sql, dialect)
                    assert {t.name for t in tree.find_all(exp.Table)} == {"audit_events"}
                    assert len(list(tree.find_all(exp.Placeholder))) == len(statement.values)
                rows = run(con, statement)
                expected = reader.get_audit_logs(org, limit=limit, **filters).events
                assert engine.get_audit_logs(org, limit=limit, **filters).events == expected
                assert [r["id"] for r in rows] == [e["id"] for e in expected], (org, filters)
                for row, want in zip(rows, expected, strict=True):
                    assert row["occurred_at"] == want["occurred_at"]
                    assert json.loads(row["actor"])["id"] == want["actor"]["id"]
                nonempty += bool(rows)
    assert nonempty == len(ORGS) * (len(CASES) - 3) * 3  # only the hostile cases are empty
    # the view holds every org: the WHERE clause alone scopes the query to one tenant
    assert con.execute("SELECT count(DISTINCT org_id) FROM audit_events").fetchone() == (3,)


def test_sqlglot_transpiles_to_duckdb_with_the_same_result(archives: dict[str, Path]) -> None:
    """sqlglot's Athena -> DuckDB transpilation of the text also runs and agrees."""
    root = archives["parquet"]
    con = duckdb_for_athena(root, "parquet")
    for filters in CASES[:10]:
        statement = select_statement("audit_events", "acme", format="parquet", **filters)
        transpiled = sqlglot.transpile(statement.sql, read="athena", write="duckdb")[0]
        direct = run(con, statement)
        again = run(con, SelectStatement(transpiled, statement.values))
        assert [r["id"] for r in again] == [r["id"] for r in direct]
