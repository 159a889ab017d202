"""DuckDBEngine: the same answers, order, pages and cursors as ArchiveReader, on real archives.

Archives are written by the real ``ArchiveExporter`` (JSON lines, Parquet, or both in one
archive); every query is asked of both engines and the pages compared one by one.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware import AuditEvent, Auditor
from audit_middleware.duckdb_engine import DuckDBEngine, duckdb_available
from audit_middleware.query import ArchiveCorruptError, ArchiveReader, Page
from audit_middleware.retrieval import audit_log_router
from exporters.archive import ArchiveExporter
from tests.conftest import serve
from tests.s3_server import CREDENTIALS, S3Endpoint
from tests.test_query import DAY0, HOSTILE, ORG_IDS, all_pages, event, newest_first, write

LAYOUTS = ["jsonl", "parquet", "mixed"]


def write_layout(root: Path, events: list[AuditEvent], layout: str, **options: Any) -> None:
    """``mixed``: every other event in a Parquet object, the rest in JSON lines."""
    if layout != "mixed":
        write(root, events, layout, **options)
        return
    write(root, events[::2], "jsonl", **options)
    write(root, events[1::2], "parquet", **options)


def pages(read: Any, limit: int, **query: Any) -> list[Page]:
    out: list[Page] = []
    cursor = None
    while True:
        page = read(limit=limit, cursor=cursor, **query)
        out.append(page)
        cursor = page.next_cursor
        if cursor is None:
            return out
        assert len(out) < 1000


def same_pages(reader: ArchiveReader, engine: DuckDBEngine, limit: int, **query: Any) -> list[str]:
    """Both engines page through ``query`` identically; the ids, newest first."""
    method = "search" if query.pop("search", False) or "org_id" not in query else "get_audit_logs"
    ours = pages(getattr(engine, method), limit, **query)
    theirs = pages(getattr(reader, method), limit, **query)
    assert ours == theirs, query
    return [row["id"] for page in ours for row in page.events]


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sample(tmp_path: Path, layout: str) -> tuple[Path, list[AuditEvent]]:
    t = DAY0 + timedelta(hours=12)
    events = [
        event("acme", t, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
        event("acme", t + timedelta(minutes=1), action="user.login.succeeded", ip="198.51.100.1"),
        event("acme", t + timedelta(days=1), actor="u2", email="bob@acme.test"),
        event("acme", t + timedelta(days=1, minutes=1), action="user.login", outcome="failure"),
        event("acme", t + timedelta(days=2), action="org.api_key.created", actor="u2"),
        event("acme", t + timedelta(days=2)),  # the same microsecond as the previous one
        event("globex", t, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
        event("globex", t + timedelta(days=2), actor="u2", email="bob@acme.test"),
        event(None, t + timedelta(hours=1), action="user.login.failed", ip="203.0.113.7"),
        event("a/b", t + timedelta(hours=2), action="user.login.failed", ip="203.0.113.7"),
        event("_global", t + timedelta(hours=3), ip="203.0.113.7"),
        *[event("acme", t + timedelta(days=5, hours=i)) for i in range(12)],
    ]
    write_layout(tmp_path / "archive", events, layout, max_events=4)
    return tmp_path / "archive", events


QUERIES: list[dict[str, Any]] = [
    {"org_id": "acme"},
    {"org_id": "acme", "actor": "u2"},
    {"org_id": "acme", "actor": "bob@acme.test"},
    {"org_id": "acme", "action": "user.login.*"},
    {"org_id": "acme", "action": "user.login"},
    {"org_id": "acme", "outcome": "failure"},
    {"org_id": "acme", "since": "2026-11-02T12:00:00Z"},
    {"org_id": "acme", "until": "2026-11-02T12:00:00Z"},
    {"org_id": "acme", "since": "2026-11-01T12:00:00Z", "until": "2026-11-01T12:01:00Z"},
    {"org_id": "globex", "actor": "u2"},
    {"org_id": "a/b"},
    {"org_id": "_global"},
    {"org_id": "nobody"},
    {},
    {"ip": "203.0.113.7"},
    {"ip": "203.0.113.7", "action": "user.login.failed"},
    {"org_id": "acme", "search": True, "action": "doc.*"},
    {"org_id": "_global", "search": True},
    {"outcome": "denied", "since": "2026-11-01T00:00:00+05:00"},
]


def test_same_pages_as_the_reader(sample: tuple[Path, list[AuditEvent]]) -> None:
    root, events = sample
    reader, engine = ArchiveReader(str(root)), DuckDBEngine(str(root))
    for query in QUERIES:
        for limit in (1, 3, 100):
            same_pages(reader, engine, limit, **dict(query))
    assert same_pages(reader, engine, 2, org_id="acme") == newest_first(
        [e for e in events if e.org_id == "acme"]
    )
    assert sorted(same_pages(reader, engine, 1000)) == sorted(e.id for e in events)
    # the events themselves are the JSON Schema dicts, org included
    (row,) = engine.get_audit_logs("a/b").events
    assert row == next(e for e in events if e.org_id == "a/b").to_dict()
    assert {r["org_id"] for r in engine.search(limit=1000).events} == {
        "acme",
        "globex",
        "a/b",
        "_global",
        None,
    }


def test_cursors_are_interchangeable(sample: tuple[Path, list[AuditEvent]]) -> None:
    root, _ = sample
    reader, engine = ArchiveReader(str(root)), DuckDBEngine(str(root))
    first = engine.get_audit_logs("acme", limit=3)
    assert first == reader.get_audit_logs("acme", limit=3)
    assert first.next_cursor is not None
    assert engine.get_audit_logs("acme", limit=4, cursor=first.next_cursor) == (
        reader.get_audit_logs("acme", limit=4, cursor=first.next_cursor)
    )
    with pytest.raises(ValueError, match="cursor does not match this query"):
        engine.get_audit_logs("globex", cursor=first.next_cursor)
    with pytest.raises(ValueError, match="cursor does not match this query"):
        engine.search(cursor=first.next_cursor)
    with pytest.raises(ValueError, match="invalid cursor"):
        engine.get_audit_logs("acme", cursor="not a cursor")


def test_invalid_arguments_raise_like_the_reader(sample: tuple[Path, list[AuditEvent]]) -> None:
    root, _ = sample
    engine = DuckDBEngine(str(root))
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 1000"):
        engine.get_audit_logs("acme", limit=0)
    with pytest.raises(ValueError, match="outcome"):
        engine.get_audit_logs("acme", outcome="maybe")
    with pytest.raises(ValueError, match="timezone"):
        engine.get_audit_logs("acme", since="2026-11-01T00:00:00")
    with pytest.raises(ValueError, match="org_id"):
        engine.get_audit_logs("")
    with pytest.raises(TypeError, match="actor"):
        engine.get_audit_logs("acme", actor=3)  # type: ignore[arg-type]


def test_hostile_values_are_inert(sample: tuple[Path, list[AuditEvent]]) -> None:
    root, events = sample
    engine = DuckDBEngine(str(root))
    for value in [*HOSTILE, "acme' --", "'; DROP TABLE audit_parquet; --", "?", "$1"]:
        page = engine.get_audit_logs(value, limit=1000)
        assert [r["id"] for r in page.events] == newest_first(
            [e for e in events if e.org_id == value]
        ), value
        for field in ("actor", "action", "ip"):
            only: dict[str, Any] = {field: value}
            assert engine.search(**only).events == [], (field, value)
        assert engine.get_audit_logs("acme", actor=value, action=value).events == []
        assert engine.get_audit_logs("acme", action=value + ".*").events == []
    for value in ("\x00", "acme\x00", "u1\x00", "\ud800", "u1\ud800"):
        assert engine.search(actor=value, action=value, ip=value).events == []
        assert engine.get_audit_logs("acme", actor=value).events == []
    # the engine still answers normally afterwards
    assert len(engine.get_audit_logs("acme", limit=1000).events) == 18


def test_pages_return_every_event_once_while_events_arrive(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "a"
    first = [event("acme", DAY0 + timedelta(hours=5 * i)) for i in range(20)]
    first += [event("acme", DAY0 + timedelta(hours=5)) for _ in range(4)]  # same microsecond
    write_layout(root, first, layout, max_events=3)
    engine = DuckDBEngine(str(root))
    page = engine.get_audit_logs("acme", limit=4)
    seen = [r["id"] for r in page.events]
    newer: list[AuditEvent] = []
    while page.next_cursor is not None:
        batch = [event("acme", DAY0 + timedelta(days=5, hours=len(newer) + i)) for i in range(3)]
        batch.append(event("globex", DAY0 + timedelta(hours=1)))
        newer += batch
        write_layout(root, batch, layout)  # new objects land between page requests
        page = engine.get_audit_logs("acme", limit=4, cursor=page.next_cursor)
        seen += [r["id"] for r in page.events]
    assert seen == newest_first(first)
    everything = [e for e in first + newer if e.org_id == "acme"]
    rows = all_pages(engine.get_audit_logs, 5, org_id="acme")
    assert [r["id"] for r in rows] == newest_first(everything)


def test_duplicates_appear_once(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "a"
    events = [event("acme", DAY0 + timedelta(minutes=i)) for i in range(5)]
    write_layout(root, events, layout)
    write(root, events[1:3], "jsonl")  # redelivered in later objects, in either format
    write(root, events[2:4], "parquet")
    write(root, [events[4], events[4]], "jsonl")  # twice in one object
    reader, engine = ArchiveReader(str(root)), DuckDBEngine(str(root))
    for limit in (1, 2, 100):
        assert same_pages(reader, engine, limit, org_id="acme") == newest_first(events)
        assert same_pages(reader, engine, limit) == newest_first(events)


def test_misplaced_jsonl_object_does_not_leak(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write(root, [event("acme", DAY0)], "jsonl")
    write(root, [event("globex", DAY0)], "jsonl")
    (globex_file,) = (root / "org_id=globex").rglob("*.jsonl.gz")
    target = root / "org_id=acme" / globex_file.parent.name / "misplaced-1.jsonl.gz"
    target.write_bytes(globex_file.read_bytes())
    engine = DuckDBEngine(str(root))
    assert [r["org_id"] for r in engine.get_audit_logs("acme").events] == ["acme"]
    assert [r["org_id"] for r in engine.search(org_id="acme").events] == ["acme"]


def test_long_org_ids_sharing_a_truncated_partition(tmp_path: Path) -> None:
    one, two = "o" * 250 + "1", "o" * 250 + "2"
    jsonl, parquet = tmp_path / "j", tmp_path / "p"
    write(jsonl, [event(one, DAY0), event(two, DAY0 + timedelta(seconds=1))], "jsonl")
    write(parquet, [event(one, DAY0), event(two, DAY0 + timedelta(seconds=1))], "parquet")
    engine = DuckDBEngine(str(jsonl))
    assert [r["org_id"] for r in engine.get_audit_logs(one).events] == [one]
    assert [r["org_id"] for r in engine.get_audit_logs(two).events] == [two]
    engine = DuckDBEngine(str(parquet))
    with pytest.raises(ValueError, match="too long to be isolated"):
        engine.get_audit_logs(one)
    assert engine.search().events == []  # skipped with a warning


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    orgs=st.lists(ORG_IDS, min_size=2, max_size=5, unique=True),
    spec=st.lists(
        st.tuples(
            st.integers(0, 6),  # org index (past the end: no org)
            st.integers(0, 5),  # day
            st.integers(0, 30),  # minute
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["doc.updated", "user.login", "user.login.failed"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    limit=st.integers(1, 6),
    actor=st.sampled_from([None, "u1", "u2@x.test"]),
    action=st.sampled_from([None, "user.login.*", "doc.updated", "user.*"]),
    outcome=st.sampled_from([None, "success", "denied"]),
    since_day=st.sampled_from([None, 1, 3]),
)
def test_tenant_isolation_and_equivalence_property(
    layout: str,
    orgs: list[str],
    spec: list[tuple[int, int, int, str, str, bool]],
    limit: int,
    actor: str | None,
    action: str | None,
    outcome: str | None,
    since_day: int | None,
) -> None:
    events = [
        event(
            None if index >= len(orgs) else orgs[index],
            DAY0 + timedelta(days=day, minutes=minute),
            actor=who,
            email=f"{who}@x.test",
            action=what,
            outcome="denied" if denied else "success",
        )
        for index, day, minute, who, what, denied in spec
    ]
    since = None if since_day is None else DAY0 + timedelta(days=since_day)
    filters: dict[str, Any] = {"actor": actor, "action": action, "outcome": outcome}
    filters["since"] = since

    def keep(e: AuditEvent) -> bool:
        if actor is not None and actor not in (e.actor.id, e.actor.email):
            return False
        if action is not None and not (
            e.action.startswith(action[:-1]) if action.endswith(".*") else e.action == action
        ):
            return False
        if outcome is not None and e.outcome != outcome:
            return False
        return since is None or e.occurred_at >= since.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    with tempfile.TemporaryDirectory() as tmp:
        write_layout(Path(tmp), events, layout, max_events=4)
        write(Path(tmp), events[:3], "jsonl")  # some duplicates
        reader, engine = ArchiveReader(tmp), DuckDBEngine(tmp)
        for org in [*orgs, "_global", "nobody"]:
            mine = [e for e in events if e.org_id == org and keep(e)]
            got = same_pages(reader, engine, limit, org_id=org, **filters)
            assert got == newest_first(mine)
            rows = all_pages(engine.get_audit_logs, limit, org_id=org, **filters)
            assert all(r["org_id"] == org for r in rows)
        everyone = same_pages(reader, engine, limit, **filters)
        assert everyone == newest_first([e for e in events if keep(e)])


# -- pruning and damaged archives -----------------------------------------------------------------


def test_a_one_day_query_reads_only_that_org_and_day(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "a"
    wanted = event("acme", DAY0 + timedelta(days=1, hours=3))
    others = [
        event("acme", DAY0 + timedelta(hours=3)),
        event("acme", DAY0 + timedelta(days=2, hours=3)),
        event("acme-corp", DAY0 + timedelta(days=1, hours=3)),
        event("globex", DAY0 + timedelta(days=1, hours=3)),
        event(None, DAY0 + timedelta(days=1, hours=3)),
    ]
    write_layout(root, [wanted, *others], layout)
    own_dir = root / "org_id=acme" / "dt=2026-11-02"
    for path in root.rglob("*.*"):  # corrupt every other partition: reading one would fail
        if path.is_file() and path.parent != own_dir:
            path.write_bytes(b"garbage")
    engine = DuckDBEngine(str(root))
    page = engine.get_audit_logs("acme", since="2026-11-02T00:00:00Z", until="2026-11-03T00:00:00Z")
    assert page.events == [wanted.to_dict()]
    with pytest.raises(ArchiveCorruptError):
        engine.get_audit_logs("acme")


def test_the_newest_days_are_queried_first(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write(root, [event("acme", DAY0 + timedelta(days=d)) for d in range(10)], "parquet")
    for path in (root / "org_id=acme" / "dt=2026-11-01").iterdir():
        path.write_bytes(b"garbage")  # the oldest day: not needed for the first page
    engine = DuckDBEngine(str(root))
    page = engine.get_audit_logs("acme", limit=2)
    assert len(page.events) == 2
    with pytest.raises(ArchiveCorruptError, match="dt=2026-11-01"):
        all_pages(engine.get_audit_logs, 2, org_id="acme")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".parquet"])
@pytest.mark.parametrize(
    "content",
    [b"garbage", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", b"PAR1" * 10],
)
def test_unreadable_objects_are_reported(tmp_path: Path, suffix: str, content: bytes) -> None:
    root = tmp_path / "a"
    write(root, [event("acme", DAY0)], "jsonl")
    (root / "org_id=acme" / "dt=2026-11-01" / f"zz-bad{suffix}").write_bytes(content)
    with pytest.raises(ArchiveCorruptError):
        DuckDBEngine(str(root)).get_audit_logs("acme")


def test_foreign_parquet_and_bad_rows_are_reported(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "a"
    write(root, [event("acme", DAY0)], "jsonl")
    day = root / "org_id=acme" / "dt=2026-11-01"
    pq.write_table(pa.table({"id": ["x"]}), day / "zz-foreign.parquet")
    with pytest.raises(ArchiveCorruptError, match="schema"):
        DuckDBEngine(str(root)).get_audit_logs("acme")
    (day / "zz-foreign.parquet").unlink()
    (day / "zz-noid.jsonl.gz").write_bytes(gzip.compress(b'{"org_id": "acme"}\n'))
    with pytest.raises(ArchiveCorruptError, match="id/occurred_at"):
        DuckDBEngine(str(root)).get_audit_logs("acme")
    (day / "zz-noid.jsonl.gz").write_bytes(
        gzip.compress(b'{"org_id": "acme", "id": "x", "occurred_at": "2026-11-01T00:00:00Z"}\n')
    )
    with pytest.raises(ArchiveCorruptError, match="occurred_at"):
        DuckDBEngine(str(root)).get_audit_logs("acme")


# -- integration ----------------------------------------------------------------------------------


def test_duckdb_reads_nothing_by_itself(tmp_path: Path) -> None:
    engine = DuckDBEngine(str(tmp_path))
    import duckdb

    for sql in (
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM read_csv('/etc/hostname')",
        "SET enable_external_access = true",
    ):
        with pytest.raises(duckdb.Error):
            engine._con.execute(sql)
    engine.close()


def test_missing_duckdb_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    assert not duckdb_available()
    with pytest.raises(ImportError, match=r"pip install 'audit-log-middleware\[duckdb\]'"):
        DuckDBEngine(str(tmp_path))


def test_url_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bucket"):
        DuckDBEngine("s3://")
    with pytest.raises(ValueError, match="s3_client_options"):
        DuckDBEngine(str(tmp_path), s3_client_options={"region": "x"})
    assert DuckDBEngine(str(tmp_path / "missing")).get_audit_logs("acme").events == []
    assert DuckDBEngine(f"file://{tmp_path}").search().events == []


def test_the_retrieval_api_serves_the_engine(sample: tuple[Path, list[AuditEvent]]) -> None:
    root, events = sample
    router = audit_log_router(DuckDBEngine(str(root)), authorize=lambda request, org: True)
    with serve(router) as url, httpx.Client(base_url=url) as client:
        response = client.get("/orgs/acme/audit-logs", params={"limit": "5", "actor": "u2"})
        assert response.status_code == 200
        data = response.json()["data"]
        acme = [e for e in events if e.org_id == "acme" and e.actor.id == "u2"]
        assert [e["id"] for e in data] == newest_first(acme)[:5]


# -- S3 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_s3_archive(endpoint: S3Endpoint, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint.reset()
    client = endpoint.client()
    client.create_bucket(Bucket="audit-duckdb")
    events = [
        event("a", DAY0 + timedelta(hours=1), ip="203.0.113.7"),
        event("ab", DAY0 + timedelta(hours=2), ip="203.0.113.7"),  # a key-prefix neighbour
        event("a/b", DAY0 + timedelta(days=1)),
        event("a", DAY0 + timedelta(days=1, hours=1)),
        event(None, DAY0 + timedelta(hours=3), ip="203.0.113.7"),
        *[event("a", DAY0 + timedelta(days=2, minutes=i)) for i in range(5)],
    ]
    archive = ArchiveExporter(
        "s3://audit-duckdb/audit", s3_client=client, format=fmt, object_lock=None, max_events=3
    )
    auditor = Auditor(exporters=[archive], batch_interval=0.005, environ={})
    try:
        for item in [*events, events[0]]:
            assert auditor.pipeline.submit(item)
        assert auditor.force_flush(timeout=10)
    finally:
        auditor.shutdown(timeout=5)

    options = {
        "endpoint_override": f"127.0.0.1:{endpoint.port}",
        "scheme": "http",
        "access_key": CREDENTIALS["aws_access_key_id"],
        "secret_key": CREDENTIALS["aws_secret_access_key"],
        "region": "us-east-1",
    }
    url = "s3://audit-duckdb/audit"
    reader = ArchiveReader(url, s3_client_options=options)
    engine = DuckDBEngine(url, s3_client_options=options)
    for query in (
        {"org_id": "a"},
        {"org_id": "ab"},
        {"org_id": "a/b"},
        {"org_id": "a", "until": "2026-11-02T00:00:00Z"},
        {"ip": "203.0.113.7"},
        {},
    ):
        for limit in (1, 2, 100):
            same_pages(reader, engine, limit, **dict(query))
    rows = all_pages(engine.get_audit_logs, 2, org_id="a")
    assert [r["id"] for r in rows] == newest_first([e for e in events if e.org_id == "a"])
    assert rows[-1] == events[0].to_dict()
    assert {r["org_id"] for r in engine.search().events} == {"a", "ab", "a/b", None}

    # pagination while new objects arrive in the bucket
    page = engine.get_audit_logs("a", limit=2)
    seen = [r["id"] for r in page.events]
    while page.next_cursor is not None:
        newer = event("a", DAY0 + timedelta(days=3, seconds=len(seen)))
        client.put_object(
            Bucket="audit-duckdb",
            Key=f"audit/org_id=a/dt=2026-11-04/late-{len(seen)}.jsonl.gz",
            Body=gzip.compress(orjson.dumps(newer.to_dict())),
        )
        page = engine.get_audit_logs("a", limit=2, cursor=page.next_cursor)
        seen += [r["id"] for r in page.events]
    assert seen == newest_first([e for e in events if e.org_id == "a"])

    # the endpoint from the environment, credentials from pyarrow's default chain
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    engine = DuckDBEngine(url)
    assert [r["id"] for r in engine.get_audit_logs("ab").events] == [events[1].id]
