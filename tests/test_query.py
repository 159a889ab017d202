"""ArchiveReader: tenant isolation, filters, keyset pagination and pruning, on real archives.

Every archive here is written by the real ``ArchiveExporter`` behind a real ``Auditor``. The
events are built by hand (fixed timestamps, client IPs) and handed to the Auditor's delivery
pipeline, the path that request events take once built; each one is checked against the
JSON Schema first.
"""

from __future__ import annotations

import base64
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware import Actor, AuditEvent, Auditor, ClientInfo, Target
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.query import ArchiveCorruptError, ArchiveReader, Page
from exporters.archive import ArchiveExporter
from tests.conftest import assert_valid
from tests.s3_server import CREDENTIALS, S3Endpoint

FORMATS = ["jsonl", "parquet"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
AWKWARD_ORGS = ["a/b", "..", "%2F", "a%2Fb", "_global", "ünï-cødé 🎉", "org_id=x", "a", "ab"]


def event(
    org: str | None,
    at: datetime,
    *,
    action: str = "doc.updated",
    outcome: str = "success",
    actor: str = "u1",
    email: str | None = None,
    ip: str | None = None,
) -> AuditEvent:
    ns = (at - EPOCH) // timedelta(microseconds=1) * 1000
    built = AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
        actor=Actor(actor, email=email),
        org_id=org,
        target=Target("doc", "d1"),
        client=None if ip is None else ClientInfo(ip, ip, "test-agent"),
        error=None,
    )
    assert_valid(built)
    return built


def write(root: Path, events: Sequence[AuditEvent], fmt: str, *, max_events: int = 10_000) -> None:
    """Deliver ``events`` through an Auditor to a fresh ArchiveExporter (a new writer id)."""
    archive = ArchiveExporter(str(root), format=fmt, max_events=max_events)
    auditor = Auditor(exporters=[archive], batch_interval=0.005, environ={})
    try:
        for item in events:
            assert auditor.pipeline.submit(item)
        assert auditor.force_flush(timeout=10)
    finally:
        auditor.shutdown(timeout=5)


def newest_first(events: Sequence[AuditEvent]) -> list[str]:
    return [e.id for e in sorted(events, key=lambda e: (e.occurred_at, e.id), reverse=True)]


def ids(page: Page) -> list[str]:
    return [row["id"] for row in page.events]


def all_pages(read: Any, limit: int, **query: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        page = read(limit=limit, cursor=cursor, **query)
        assert len(page.events) <= limit
        rows.extend(page.events)
        if page.next_cursor is None:
            return rows
        assert page.events, "a page with a cursor must not be empty"
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sample(tmp_path: Path, fmt: str) -> tuple[ArchiveReader, list[AuditEvent]]:
    """Three days, three orgs plus global events, several actors, actions, outcomes and IPs."""
    t = DAY0 + timedelta(hours=12)
    events = [
        event("acme", t, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
        event("acme", t + timedelta(minutes=1), action="user.login.succeeded", ip="198.51.100.1"),
        event("acme", t + timedelta(days=1), actor="u2", email="bob@acme.test"),
        event("acme", t + timedelta(days=1, minutes=1), action="user.login", outcome="failure"),
        event("acme", t + timedelta(days=2), action="org.api_key.created", actor="u2"),
        event("globex", t, action="user.login.failed", outcome="denied", ip="203.0.113.7"),
        event("globex", t + timedelta(days=2), actor="u2", email="bob@acme.test"),
        event(None, t + timedelta(hours=1), action="user.login.failed", ip="203.0.113.7"),
        event("a/b", t + timedelta(hours=2), action="user.login.failed", ip="203.0.113.7"),
    ]
    write(tmp_path / "archive", events, fmt)
    return ArchiveReader(str(tmp_path / "archive")), events


# -- round trip and order -------------------------------------------------------------------------


def test_events_come_back_exactly_newest_first(
    sample: tuple[ArchiveReader, list[AuditEvent]],
) -> None:
    reader, events = sample
    page = reader.get_audit_logs("acme")
    acme = [e for e in events if e.org_id == "acme"]
    assert ids(page) == newest_first(acme)
    by_id = {e.id: e.to_dict() for e in acme}
    assert all(row == by_id[row["id"]] for row in page.events)  # org_id restored for Parquet
    assert page.next_cursor is None
    assert list(page.events[0]) == list(acme[0].to_dict())  # the schema's key order


def test_global_events_are_only_visible_to_search(
    sample: tuple[ArchiveReader, list[AuditEvent]],
) -> None:
    reader, events = sample
    assert reader.get_audit_logs("_global").events == []
    everything = reader.search(limit=1000)
    assert sorted(ids(everything)) == sorted(e.id for e in events)
    global_rows = [r for r in everything.events if r["org_id"] is None]
    assert [r["action"] for r in global_rows] == ["user.login.failed"]


# -- filters --------------------------------------------------------------------------------------


def test_filters(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, events = sample
    acme = [e for e in events if e.org_id == "acme"]

    def expect(predicate: Any) -> list[str]:
        return newest_first([e for e in acme if predicate(e)])

    assert ids(reader.get_audit_logs("acme", actor="u2")) == expect(lambda e: e.actor.id == "u2")
    assert ids(reader.get_audit_logs("acme", actor="bob@acme.test")) == expect(
        lambda e: e.actor.email == "bob@acme.test"
    )
    assert ids(reader.get_audit_logs("acme", action="user.login.failed")) == [acme[0].id]
    assert ids(reader.get_audit_logs("acme", action="user.login.*")) == expect(
        lambda e: e.action.startswith("user.login.")
    )  # not "user.login" itself
    assert ids(reader.get_audit_logs("acme", action="user.*")) == expect(
        lambda e: e.action.startswith("user.")
    )
    assert ids(reader.get_audit_logs("acme", outcome="denied")) == [acme[0].id]
    assert ids(reader.get_audit_logs("acme", actor="u2", action="org.api_key.created")) == [
        acme[4].id
    ]
    assert reader.get_audit_logs("acme", action="user.login.*", outcome="success").events == [
        acme[1].to_dict()
    ]


def test_since_until_boundaries(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, events = sample
    acme = [e for e in events if e.org_id == "acme"]
    at = [datetime.fromisoformat(e.occurred_at) for e in acme]
    # since inclusive, until exclusive, at microsecond precision
    assert ids(reader.get_audit_logs("acme", since=at[2], until=at[4])) == [acme[3].id, acme[2].id]
    assert ids(reader.get_audit_logs("acme", since=acme[4].occurred_at)) == [acme[4].id]
    assert ids(reader.get_audit_logs("acme", until=acme[1].occurred_at)) == [acme[0].id]
    assert reader.get_audit_logs("acme", since=at[1], until=at[1]).events == []
    # day boundaries, other offsets
    day1 = DAY0 + timedelta(days=1)
    assert ids(reader.get_audit_logs("acme", since=day1, until=day1 + timedelta(days=1))) == [
        acme[3].id,
        acme[2].id,
    ]
    plus2 = timezone(timedelta(hours=2))
    assert ids(reader.get_audit_logs("acme", until=day1.astimezone(plus2).isoformat())) == [
        acme[1].id,
        acme[0].id,
    ]
    assert ids(reader.get_audit_logs("acme", since="2026-11-03T00:00:00Z")) == [acme[4].id]


def test_search_by_ip_across_orgs(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, events = sample
    page = reader.search(ip="203.0.113.7", action="user.login.failed")
    expected = [e for e in events if e.client is not None and e.client.ip == "203.0.113.7"]
    assert ids(page) == newest_first(expected)
    assert {row["org_id"] for row in page.events} == {"acme", "globex", None, "a/b"}
    assert ids(reader.search(org_id="globex", ip="203.0.113.7")) == [events[5].id]
    assert ids(reader.search(org_id="a/b")) == [events[8].id]
    assert reader.search(ip="203.0.113.8").events == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": True}, "limit"),
        ({"outcome": "ok"}, "outcome"),
        ({"since": datetime(2026, 11, 1)}, "timezone"),  # naive on purpose
        ({"until": "2026-11-01T00:00:00"}, "timezone"),
        ({"since": "yesterday"}, "RFC 3339"),
        ({"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}, "after"),
        ({"cursor": "not a cursor!"}, "invalid cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'{"v":1}').decode()}, "invalid cursor"),
    ],
)
def test_invalid_arguments(
    sample: tuple[ArchiveReader, list[AuditEvent]], kwargs: dict[str, Any], message: str
) -> None:
    reader, _ = sample
    with pytest.raises(ValueError, match=message):
        reader.get_audit_logs("acme", **kwargs)
    with pytest.raises(ValueError, match=message):
        reader.search(**kwargs)


@pytest.mark.parametrize("org", ["", "a\x00b", "\ud800", None, 5])
def test_invalid_org_ids(sample: tuple[ArchiveReader, list[AuditEvent]], org: Any) -> None:
    reader, _ = sample
    with pytest.raises(ValueError, match="org_id"):
        reader.get_audit_logs(org)
    if org is not None:
        with pytest.raises(ValueError, match="org_id"):
            reader.search(org_id=org)


def test_non_string_filter_is_a_type_error(
    sample: tuple[ArchiveReader, list[AuditEvent]],
) -> None:
    reader, _ = sample
    with pytest.raises(TypeError, match="actor"):
        reader.get_audit_logs("acme", actor=["u1"])  # type: ignore[arg-type]


# -- pagination -----------------------------------------------------------------------------------


def test_pages_return_every_event_once(tmp_path: Path, fmt: str) -> None:
    t = DAY0
    events = [event("acme", t + timedelta(hours=7 * i)) for i in range(23)]
    events += [event("acme", t + timedelta(hours=5)) for _ in range(4)]  # same microsecond
    write(tmp_path / "a", events, fmt, max_events=5)
    reader = ArchiveReader(str(tmp_path / "a"))
    for limit in (1, 4, 7, 27, 100):
        rows = all_pages(reader.get_audit_logs, limit, org_id="acme")
        assert [r["id"] for r in rows] == newest_first(events)


def test_paging_is_stable_while_events_are_appended(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "a"
    first = [event("acme", DAY0 + timedelta(hours=i)) for i in range(10)]
    write(root, first, fmt)
    reader = ArchiveReader(str(root))
    page = reader.get_audit_logs("acme", limit=4)
    seen = ids(page)
    newer: list[AuditEvent] = []
    while page.next_cursor is not None:
        batch = [event("acme", DAY0 + timedelta(days=1, hours=len(newer) + i)) for i in range(3)]
        newer += batch
        write(root, batch, fmt)  # newer events land between page requests, in new objects
        page = reader.get_audit_logs("acme", limit=4, cursor=page.next_cursor)
        seen += ids(page)
    assert seen == newest_first(first)
    assert ids(reader.get_audit_logs("acme", limit=1000)) == newest_first(first + newer)


def test_cursor_is_bound_to_its_query(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, _ = sample
    cursor = reader.get_audit_logs("acme", limit=1).next_cursor
    assert cursor is not None
    assert not set(cursor) & set("=/+")  # URL-safe, no padding
    assert reader.get_audit_logs("acme", limit=2, cursor=cursor).events  # limit may change
    calls: list[Callable[[], Page]] = [
        lambda: reader.get_audit_logs("globex", cursor=cursor),
        lambda: reader.get_audit_logs("acme", actor="u2", cursor=cursor),
        lambda: reader.get_audit_logs("acme", since=DAY0, cursor=cursor),
        lambda: reader.search(org_id="acme", cursor=cursor),
        lambda: reader.search(cursor=cursor),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="cursor does not match this query"):
            call()


# -- duplicates -----------------------------------------------------------------------------------


def test_duplicates_appear_once(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "a"
    events = [event("acme", DAY0 + timedelta(minutes=i)) for i in range(5)]
    write(root, events, fmt)
    write(root, events[1:3], fmt)  # redelivered in a later object
    write(root, [events[4], events[4]], fmt)  # twice in one object
    reader = ArchiveReader(str(root))
    assert ids(reader.get_audit_logs("acme")) == newest_first(events)
    assert [r["id"] for r in all_pages(reader.get_audit_logs, 1, org_id="acme")] == newest_first(
        events
    )
    assert ids(reader.search()) == newest_first(events)


# -- tenant isolation -----------------------------------------------------------------------------


HOSTILE = [
    "'",
    "' OR '1'='1",
    "--",
    "*",
    "%",
    "../",
    "../acme",
    "..",
    "a/b",
    "%2F",
    "acme/../globex",
    "x" * 10_000,
    "ünï-cødé 🎉",
    "org_id=acme",
    "acme\n",
    "acme ",
    "ACME",
]


def test_hostile_values_are_inert(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, events = sample
    for value in HOSTILE:
        page = reader.get_audit_logs(value, limit=1000)
        assert ids(page) == newest_first([e for e in events if e.org_id == value]), value
        for field in ("actor", "action", "ip"):
            only: dict[str, Any] = {field: value}
            assert reader.search(**only).events == [], (field, value)
        assert reader.get_audit_logs("acme", actor=value, action=value).events == []
    for value in ("\x00", "acme\x00", "\ud800"):  # NUL and surrogates in filters match nothing
        assert reader.search(actor=value, action=value, ip=value).events == []


def test_misplaced_jsonl_object_does_not_leak(tmp_path: Path) -> None:
    root = tmp_path / "a"
    write(root, [event("acme", DAY0)], "jsonl")
    write(root, [event("globex", DAY0)], "jsonl")
    (globex_file,) = (root / "org_id=globex").rglob("*.jsonl.gz")
    target = root / "org_id=acme" / globex_file.parent.name / "misplaced-1.jsonl.gz"
    target.write_bytes(globex_file.read_bytes())
    reader = ArchiveReader(str(root))
    rows = reader.get_audit_logs("acme").events
    assert [r["org_id"] for r in rows] == ["acme"]


def test_long_org_ids_sharing_a_truncated_partition(tmp_path: Path, fmt: str) -> None:
    one, two = "o" * 250 + "1", "o" * 250 + "2"  # the writer truncates both to the same value
    root = tmp_path / "a"
    write(root, [event(one, DAY0), event(two, DAY0 + timedelta(seconds=1))], fmt)
    assert len(list(root.iterdir())) == 1
    reader = ArchiveReader(str(root))
    if fmt == "jsonl":
        assert [r["org_id"] for r in reader.get_audit_logs(one).events] == [one]
        assert [r["org_id"] for r in reader.get_audit_logs(two).events] == [two]
    else:  # Parquet rows carry no org_id: refuse rather than guess
        with pytest.raises(ValueError, match="too long to be isolated"):
            reader.get_audit_logs(one)
        assert reader.search().events == []  # skipped with a warning


ORG_IDS = st.one_of(
    st.sampled_from(AWKWARD_ORGS),
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=1,
        max_size=12,
    ),
)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    orgs=st.lists(ORG_IDS, min_size=2, max_size=6, unique=True),
    spec=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(0, 50), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    limit=st.integers(1, 6),
    outcome=st.sampled_from([None, "success", "denied"]),
)
def test_tenant_isolation_property(
    fmt: str,
    orgs: list[str],
    spec: list[tuple[int, int, int, bool]],
    limit: int,
    outcome: str | None,
) -> None:
    events = [
        event(
            None if index >= len(orgs) else orgs[index],
            DAY0 + timedelta(days=day, minutes=minute),
            outcome="denied" if denied else "success",
        )
        for index, day, minute, denied in spec
    ]
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp), events, fmt, max_events=4)
        write(Path(tmp), events[:3], fmt)  # some duplicates
        reader = ArchiveReader(tmp)
        for org in [*orgs, "_global", "nobody"]:
            mine = [e for e in events if e.org_id == org and outcome in (None, e.outcome)]
            rows = all_pages(reader.get_audit_logs, limit, org_id=org, outcome=outcome)
            assert [r["id"] for r in rows] == newest_first(mine)
            assert all(r["org_id"] == org for r in rows)
        everyone = all_pages(reader.search, 1000)
        assert sorted(r["id"] for r in everyone) == sorted(e.id for e in events)


# -- partition pruning ----------------------------------------------------------------------------


class RecordingFS:
    """Wraps a pyarrow filesystem; records every listed directory and opened file."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.listed: list[str] = []
        self.opened: list[str] = []

    def get_file_info(self, selector: Any) -> Any:
        self.listed.append(selector.base_dir)
        return self.inner.get_file_info(selector)

    def open_input_stream(self, path: str, **options: Any) -> Any:
        self.opened.append(path)
        return self.inner.open_input_stream(path, **options)


def test_a_one_day_query_touches_only_that_org_and_day(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "a"
    wanted = event("acme", DAY0 + timedelta(days=1, hours=3))
    others = [
        event("acme", DAY0 + timedelta(hours=3)),
        event("acme", DAY0 + timedelta(days=2, hours=3)),
        event("acme-corp", DAY0 + timedelta(days=1, hours=3)),
        event("globex", DAY0 + timedelta(days=1, hours=3)),
        event(None, DAY0 + timedelta(days=1, hours=3)),
    ]
    write(root, [wanted, *others], fmt)
    own_dir = root / "org_id=acme" / "dt=2026-11-02"
    for path in root.rglob("*.*"):  # corrupt every other partition: reading one would fail
        if path.is_file() and path.parent != own_dir:
            path.write_bytes(b"garbage")
    reader = ArchiveReader(str(root))
    spy = RecordingFS(reader._fs)
    reader._fs = spy
    page = reader.get_audit_logs("acme", since="2026-11-02T00:00:00Z", until="2026-11-03T00:00:00Z")
    assert page.events == [wanted.to_dict()]
    org_dir = (root / "org_id=acme").as_posix()
    assert all(p == org_dir or p.startswith(org_dir + "/") for p in spy.listed), spy.listed
    assert spy.opened
    assert all(Path(p).parent == own_dir for p in spy.opened), spy.opened
    # the whole org's history is read when asked, and the corruption is then reported
    with pytest.raises(ArchiveCorruptError):
        reader.get_audit_logs("acme")


def test_early_stop_reads_only_the_newest_days(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "a"
    write(root, [event("acme", DAY0 + timedelta(days=d)) for d in range(6)], fmt)
    for path in (root / "org_id=acme" / "dt=2026-11-01").iterdir():
        path.write_bytes(b"garbage")  # the oldest day: not needed for the first two pages
    reader = ArchiveReader(str(root))
    page = reader.get_audit_logs("acme", limit=2)
    assert len(page.events) == 2
    assert page.next_cursor is not None
    page = reader.get_audit_logs("acme", limit=2, cursor=page.next_cursor)
    assert len(page.events) == 2
    with pytest.raises(ArchiveCorruptError, match="dt=2026-11-01"):
        reader.get_audit_logs("acme", limit=2, cursor=page.next_cursor)


# -- S3 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[S3Endpoint]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    endpoint = S3Endpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()


def test_s3_archive_through_pyarrow(
    s3_endpoint: S3Endpoint, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_endpoint.reset()
    client = s3_endpoint.client()
    client.create_bucket(Bucket="audit-query")
    events = [
        event("a", DAY0 + timedelta(hours=1), ip="203.0.113.7"),
        event("ab", DAY0 + timedelta(hours=2), ip="203.0.113.7"),  # a key-prefix neighbour
        event("a/b", DAY0 + timedelta(days=1)),
        event("a", DAY0 + timedelta(days=1, hours=1)),
        event(None, DAY0 + timedelta(hours=3), ip="203.0.113.7"),
    ]
    archive = ArchiveExporter(
        "s3://audit-query/audit", s3_client=client, format=fmt, object_lock=None
    )
    auditor = Auditor(exporters=[archive], batch_interval=0.005, environ={})
    try:
        for item in [*events, events[0]]:
            auditor.pipeline.submit(item)
        assert auditor.force_flush(timeout=10)
    finally:
        auditor.shutdown(timeout=5)

    options = {
        "endpoint_override": f"127.0.0.1:{s3_endpoint.port}",
        "scheme": "http",
        "access_key": CREDENTIALS["aws_access_key_id"],
        "secret_key": CREDENTIALS["aws_secret_access_key"],
        "region": "us-east-1",
    }
    reader = ArchiveReader("s3://audit-query/audit", s3_client_options=options)
    rows = all_pages(reader.get_audit_logs, 1, org_id="a")
    assert [r["id"] for r in rows] == newest_first([events[0], events[3]])
    assert rows[-1] == events[0].to_dict()
    assert ids(reader.get_audit_logs("a/b")) == [events[2].id]
    assert ids(reader.get_audit_logs("a", until="2026-11-02T00:00:00Z")) == [events[0].id]
    assert ids(reader.search(ip="203.0.113.7")) == newest_first([events[0], events[1], events[4]])
    assert {r["org_id"] for r in reader.search().events} == {"a", "ab", "a/b", None}

    # the endpoint from the environment, credentials from pyarrow's default chain
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    assert ids(ArchiveReader("s3://audit-query/audit").get_audit_logs("ab")) == [events[1].id]


def test_cursor_is_opaque_json(sample: tuple[ArchiveReader, list[AuditEvent]]) -> None:
    reader, _ = sample
    cursor = reader.get_audit_logs("acme", limit=1).next_cursor
    assert cursor is not None
    data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert set(data) == {"v", "k", "q"}
    tampered = dict(data, k=["not a time", "x"])
    forged = base64.urlsafe_b64encode(orjson.dumps(tampered)).decode()
    with pytest.raises(ValueError, match="invalid cursor"):
        reader.get_audit_logs("acme", cursor=forged)


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)
    with pytest.raises(ImportError, match=r"pip install 'audit-log-middleware\[parquet\]'"):
        ArchiveReader(str(tmp_path))


def test_url_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bucket"):
        ArchiveReader("s3://")
    with pytest.raises(ValueError, match="expected"):
        ArchiveReader("ftp://host/x")
    with pytest.raises(ValueError, match="s3_client_options"):
        ArchiveReader(str(tmp_path), s3_client_options={"region": "x"})
    # an empty or missing directory is an empty archive
    assert ArchiveReader(str(tmp_path / "missing")).get_audit_logs("acme").events == []
    assert ArchiveReader(f"file://{tmp_path}").search().events == []
