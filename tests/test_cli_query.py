"""``audit-log query`` against a real archive written by the ArchiveExporter."""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from audit_middleware import Actor, AuditEvent, ClientInfo, Target
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.cli import main
from audit_middleware.retrieval import CSV_COLUMNS
from tests.conftest import assert_valid
from tests.test_query import DAY0, EPOCH, event, newest_first, write

T = DAY0 + timedelta(hours=12)


def hostile_event() -> AuditEvent:
    at = T + timedelta(hours=5)
    ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    built = AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action="doc.shared",
        outcome="success",
        actor=Actor("=cmd()", email=None),
        org_id="acme",
        target=Target("doc", "d\x1b[31mred"),
        client=ClientInfo("203.0.113.9", "203.0.113.9", "agent"),
        error=None,
    )
    assert_valid(built)
    return built


ACME = [
    event("acme", T, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
    event("acme", T + timedelta(days=1), actor="u2", email="bob@acme.test"),
    event("acme", T + timedelta(days=2), action="org.api_key.created", actor="u2"),
    hostile_event(),
]
GLOBEX = [event("globex", T + timedelta(minutes=3), actor="globex-only")]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    root: Path = tmp_path_factory.mktemp("cli-query") / "archive"
    write(root, [*ACME, *GLOBEX], "jsonl")
    return str(root)


@pytest.fixture(autouse=True)
def no_archive_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIT_LOG_ARCHIVE_URL", raising=False)


def test_json_output(archive: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--archive", archive, "--org", "acme", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["id"] for row in rows] == newest_first(ACME)


def test_limit_and_filters(archive: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["query", "--archive", archive, "--org", "acme", "--format", "json"]
    assert main([*args, "--limit", "2"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == newest_first(ACME)[:2]
    assert main([*args, "--actor", "u2", "--since", "2026-11-03T00:00:00Z"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [ACME[2].id]
    assert main([*args, "--action", "user.login.*", "--outcome", "denied"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [ACME[0].id]
    assert main([*args, "--until", "2026-11-01T00:00:00Z"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_csv_output_is_injection_safe(archive: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--archive", archive, "--org", "acme", "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert tuple(rows[0]) == CSV_COLUMNS
    records = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [r["id"] for r in records] == newest_first(ACME)
    hostile = next(r for r in records if r["id"] == ACME[3].id)
    assert hostile["actor_id"] == "'=cmd()"


def test_table_output(
    archive: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_LOG_ARCHIVE_URL", archive)  # the default archive
    assert main(["query", "--org", "acme"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["occurred_at", "action", "outcome", "actor", "target", "ip"]
    assert lines[-1] == "(4 events)"
    assert "bob@acme.test" in out
    assert "org.api_key.created" in out
    assert "\x1b" not in out  # control characters are escaped, not sent to the terminal
    assert "doc:d\\x1b[31mred" in out
    assert "globex-only" not in out
    body = lines[1:-1]
    assert [line.split()[0] for line in body] == [
        e.occurred_at for e in sorted(ACME, key=lambda e: e.occurred_at, reverse=True)
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--since", "yesterday"], "since must be an RFC 3339 timestamp"),
        (["--until", "2026-11-01T00:00:00"], "until must carry a timezone"),
        (["--limit", "0"], "--limit must be from 1"),
        (["--limit", "many"], "invalid int value"),
        (["--outcome", "maybe"], "invalid choice"),
        (["--format", "xml"], "invalid choice"),
    ],
)
def test_bad_input_exits_2(
    archive: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["query", "--archive", archive, "--org", "acme", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert message in captured.err


def test_missing_archive_or_org_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--org", "acme"]) == 2
    assert "AUDIT_LOG_ARCHIVE_URL" in capsys.readouterr().err
    assert main(["query", "--archive", "/nonexistent"]) == 2
    assert "--org" in capsys.readouterr().err
    assert main(["query", "--archive", "ftp://x/y", "--org", "acme"]) == 2
    assert "expected s3://bucket/prefix" in capsys.readouterr().err


@pytest.mark.parametrize(
    "filters",
    [[], ["--actor", "u2"], ["--action", "user.login.*"], ["--since", "2026-11-02T00:00:00Z"]],
)
def test_both_engines_print_the_same(
    archive: str, capsys: pytest.CaptureFixture[str], filters: list[str]
) -> None:
    outputs = []
    for engine in ("python", "duckdb", None):
        args = ["query", "--archive", archive, "--org", "acme", "--format", "json", "--limit", "3"]
        assert main([*args, *filters, *(["--engine", engine] if engine else [])]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert json.loads(outputs[0])


def test_duckdb_engine_without_duckdb_exits_2(
    archive: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert main(["query", "--archive", archive, "--org", "acme", "--engine", "duckdb"]) == 2
    assert "audit-log-middleware[duckdb]" in capsys.readouterr().err
    # the default engine is the pure-Python reader
    assert main(["query", "--archive", archive, "--org", "acme", "--format", "json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == newest_first(ACME)
