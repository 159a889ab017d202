"""Process delivery (``AUDIT_LOG_DELIVERY=process``): events sealed and exported in a forked
process, through real sockets, real processes and a real uvicorn server."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import logging
import marshal
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from audit_middleware import (
    Actor,
    AuditConfigError,
    AuditEvent,
    AuditMiddleware,
    Auditor,
    AuditWSGIMiddleware,
    ExportResult,
    Target,
    _warn,
)
from audit_middleware._delivery_process import DeliveryProcess, deliver_frame
from audit_middleware._lines import event_line
from audit_middleware._wire import Unpacker, pack_events, plain_record
from audit_middleware.integrity import verify_events
from exporters.archive import ArchiveExporter
from exporters.log import StructlogExporter
from tests.conftest import MemoryAuditor, eventually, serve, serve_wsgi

ROOT = Path(__file__).resolve().parent.parent


class FileExporter:
    """Appends ``{"pid", "id", "seq"}`` per event to a file (readable from the test's process);
    optionally slow, or hanging until ``release`` is set."""

    def __init__(self, path: Path, delay: float = 0.0, hang: bool = False) -> None:
        self.path = path
        self.delay = delay
        self.hang = hang

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        while self.hang:
            time.sleep(0.05)
        time.sleep(self.delay)
        with self.path.open("ab") as f:
            for event in batch:
                seq = None if event.integrity is None else event.integrity["seq"]
                f.write(orjson.dumps({"pid": os.getpid(), "id": event.id, "seq": seq}) + b"\n")
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        return not self.hang

    def shutdown(self, timeout: float | None = None) -> None:
        return None

    def rows(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines()]


@pytest.fixture
def auditors() -> Iterator[Callable[..., Auditor]]:
    """Process-delivery auditors, shut down (their delivery processes stopped) after the test."""
    made: list[Auditor] = []

    def make(**options: object) -> Auditor:
        options.setdefault("batch_interval", 0.01)
        options.setdefault("environ", {})
        auditor = Auditor(delivery="process", **options)  # type: ignore[arg-type]
        made.append(auditor)
        return auditor

    yield make
    for auditor in made:
        auditor.shutdown(timeout=5.0)
        process = auditor.delivery_process
        assert process is None or process.pid == 0, "a delivery process outlived its shutdown"


def _record(auditor: Auditor, first: int, n: int) -> None:
    for i in range(first, first + n):
        auditor.record("doc.updated", target=Target("doc", str(i)), metadata={"i": i})


def _started(
    auditors: Callable[..., Auditor], tmp_path: Path, **options: object
) -> tuple[Auditor, DeliveryProcess, FileExporter]:
    """An auditor whose delivery process runs and delivered events 0-4 to a FileExporter."""
    marks = FileExporter(tmp_path / "pids.jsonl")
    auditor = auditors(exporters=[marks], **options)
    _record(auditor, 0, 5)
    assert auditor.force_flush(timeout=5)
    process = auditor.delivery_process
    assert process is not None
    assert process.pid != 0
    return auditor, process, marks


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent, maybe init, to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# -- the wire -------------------------------------------------------------------------------------


def test_events_cross_the_wire_unchanged(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(integrity=True)
    auditor.record(
        "user.invited",
        actor=Actor("u_1", email="ada@example.com", name="Ada"),
        target=Target("user", "42"),
        org_id="org_1",
        outcome="denied",
        metadata={"nested": {"list": [1, 2.5, None, True], "text": "é\n"}, "n": 1},
    )
    auditor.record("doc.deleted", actor=Actor(None, type="anonymous"), org_id=None)
    app = Starlette(routes=[Route("/x", _hello, methods=["POST"])])
    asyncio.run(_post(AuditMiddleware(app, auditor=auditor), "/x?q=1&token=secret"))
    events = auditor.wait_for(3)
    unpacker = Unpacker()
    back = [unpacker.event(flat) for flat in unpacker.frame(pack_events(events))]
    assert [e.to_dict() for e in back] == [e.to_dict() for e in events]
    assert [event_line(e) for e in back] == [event_line(e) for e in events]
    again = [unpacker.event(flat) for flat in unpacker.frame(pack_events(events))]
    assert again[2].client is back[2].client  # repeated parts come back shared
    assert again[2].request is not None
    assert back[2].request is not None
    assert again[2].request.headers is back[2].request.headers


def test_a_frame_is_delivered_whole_and_a_tuple_that_is_no_event_costs_only_itself(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    source = make_auditor()
    for i in range(6):
        source.record("doc.updated", target=Target("doc", str(i)), org_id="org_1")
    events = source.wait_for(6)
    child = make_auditor(integrity=True)
    unpacker = Unpacker()
    pipeline = child._delivery_pipeline(unpacker)  # what a delivery process runs
    deliver_frame(pipeline, unpacker, pack_events(events[:3]))
    good = unpacker.frame(pack_events(events[3:]))
    broken = marshal.dumps([good[0], ("not", "an", "event"), good[1], good[2]])
    deliver_frame(pipeline, unpacker, broken)
    assert pipeline.force_flush(timeout=5.0)
    delivered = child.memory.events
    assert [e.target for e in delivered] == [e.target for e in events]
    assert [e.integrity["seq"] for e in delivered if e.integrity] == [1, 2, 3, 4, 5, 6]
    assert pipeline.stats().build_errors == 1
    pipeline.shutdown(timeout=5.0)


def test_values_marshal_refuses_travel_as_their_json(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    auditor.record("doc.updated")
    (event,) = auditor.wait_for(1)
    when = datetime.datetime(2026, 11, 28, 1, 2, 3, tzinfo=datetime.UTC)
    odd = event._replace(metadata={"when": when, "ids": frozenset()})
    unpacker = Unpacker()
    (back,) = [unpacker.event(flat) for flat in unpacker.frame(pack_events([odd]))]
    assert back.metadata == {"when": "2026-11-28T01:02:03+00:00", "ids": "frozenset()"}


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def _post(app: AuditMiddleware, path: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(path, headers={"user-agent": "t/1", "cookie": "s=1"})
    assert response.status_code == 200


def test_a_record_crosses_unbuilt_only_when_marshal_carries_it_unchanged(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    queued: list[tuple[object, ...]] = []
    auditor._submit = queued.append  # type: ignore[method-assign, assignment]

    class Text(str):
        pass

    plain = {"n": 1, "ok": True, "r": 0.5, "none": None}
    auditor.record("doc.updated", actor=Actor("u_1"), target=Target("doc", "d_1"), metadata=plain)
    auditor.record("doc.deleted")
    auditor.record("doc.shared", metadata={"nested": {"a": 1}})
    auditor.record("doc.exported", metadata={"when": datetime.date(2026, 11, 28)})
    auditor.record("doc.tagged", metadata={1: "an int key"})  # type: ignore[dict-item]
    auditor.record("doc.moved", metadata={"to": Text("folder")})
    auditor.record("doc.copied", actor=Actor(Text("u_2"), type="user"))  # made plain text
    assert [plain_record(record) for record in queued] == [True, True, *[False] * 4, True]
    traced = (*queued[0][:9], {"trace_id": "a" * 32})
    assert plain_record(traced)
    assert not plain_record((*queued[0][:9], {"trace_id": 1}))
    assert not plain_record(traced[:9])  # not a record
    with pytest.raises(ValueError, match="no builder"):
        Unpacker().event(marshal.loads(pack_events([queued[0]]))[0])


class LineFile:
    """Appends each event's JSON line to a file (readable from the test's process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        with self.path.open("ab") as f:
            f.writelines(event_line(event) for event in batch)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        return None


def _records_of_every_kind(auditor: Auditor) -> None:
    auditor.record(
        "doc.updated",
        actor=Actor("u_1", type="user", email="ana@example.com", name="Ana"),
        target=Target("doc", "d_1"),
        org_id="org_1",
        outcome="denied",
        metadata={"n": 2**70, "ok": True, "ratio": 0.5, "none": None, "text": "é\n\x1b[31m"},
    )
    auditor.record("doc.deleted")
    auditor.record("doc.renamed", metadata={"password": "hunter2", "api_token": "t", "to": "b"})
    auditor.record("doc.described", metadata={"text": "x" * 100_000})
    auditor.record("doc.shared", metadata={"nested": {"list": [1, 2.5]}})
    auditor.record("doc.exported", metadata={"when": datetime.date(2026, 11, 28)})
    for _ in range(2):
        auditor.record("user.login.failed", target=Target("user", "ana"), outcome="failure")


def test_records_built_by_the_delivery_process_equal_those_built_in_the_app(
    auditors: Callable[..., Auditor],
    make_auditor: Callable[..., MemoryAuditor],
    tmp_path: Path,
) -> None:
    lines = LineFile(tmp_path / "lines.jsonl")
    auditor = auditors(exporters=[lines], brute_force_threshold=2)
    built_here: list[str] = []
    build = auditor._build_unsealed

    def spy(item: object) -> Sequence[AuditEvent]:
        events = build(item)
        built_here.extend(event.action for event in events)
        return events

    auditor._build_unsealed = spy  # type: ignore[method-assign]
    _records_of_every_kind(auditor)
    assert auditor.force_flush(timeout=10)
    crossed = [json.loads(line) for line in lines.path.read_bytes().splitlines()]
    reference = make_auditor(brute_force_threshold=2)
    _records_of_every_kind(reference)
    expected = [event.to_dict() for event in reference.wait_for(9)]

    alert = "security.brute_force.suspected"
    assert [e["action"] for e in crossed] == [e["action"] for e in expected]
    assert crossed[-1]["action"] == alert
    for got, want in zip(crossed, expected, strict=True):
        assert got["id"][14] == "7"  # a UUIDv7, made where the event was built
        assert got["id"] != want["id"]
        for key in ("id", "occurred_at", "integrity"):
            del got[key], want[key]
        if got["action"] == alert:  # failure ids and times differ between the two runs
            del got["metadata"], want["metadata"]
        assert got == want
    # plain records crossed unbuilt; the others, and the brute-force watch, stayed here
    assert built_here == [
        "doc.shared",
        "doc.exported",
        "user.login.failed",
        "user.login.failed",
        alert,
    ]


# -- the process ----------------------------------------------------------------------------------


def _assert_all_exported(auditor: Auditor, n: int) -> None:
    """``n`` events processed, none dropped or queued, exported by the log and mark files."""
    stats = auditor.stats()
    assert stats.processed == n
    assert stats.dropped == 0
    assert stats.queued == 0
    assert [(e.name, e.exported) for e in stats.exporters] == [
        ("StructlogExporter", n),
        ("FileExporter", n),
    ]


def test_under_uvicorn_a_forked_process_seals_and_exports_every_event(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    marks = FileExporter(tmp_path / "pids.jsonl")
    auditor = auditors(exporters=[StructlogExporter(output=str(log)), marks], batch_size=64)
    app = Starlette(routes=[Route("/hello", _hello, methods=["POST"])])
    n = 300

    async def load(url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as client:
            for chunk in range(0, n, 50):
                responses = await asyncio.gather(
                    *(
                        client.post("/hello", headers={"x-request-id": f"r{i}"})
                        for i in range(chunk, chunk + 50)
                    )
                )
                assert {r.status_code for r in responses} == {200}

    with serve(AuditMiddleware(app, auditor=auditor)) as url:
        asyncio.run(load(url))
        assert auditor.force_flush(timeout=10)
    process = auditor.delivery_process
    assert process is not None
    assert process.pid not in (0, os.getpid())
    lines = log.read_bytes().splitlines()
    assert sorted(json.loads(line)["request"]["id"] for line in lines) == sorted(
        f"r{i}" for i in range(n)
    )
    report = verify_events(lines)
    assert report.ok, report.findings
    assert report.streams == 1
    assert {row["pid"] for row in marks.rows()} == {process.pid}
    _assert_all_exported(auditor, n)


def test_under_a_threaded_wsgi_server_every_request_is_delivered_once(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    flask_app = Flask(__name__)

    @flask_app.post("/orgs/<org_id>/docs")
    def create(org_id: str) -> tuple[str, int]:
        return "made", 201

    marks = FileExporter(tmp_path / "pids.jsonl")
    auditor = auditors(exporters=[marks], batch_size=16)
    flask_app.wsgi_app = AuditWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, auditor=auditor
    )
    n = 120

    def post(i: int) -> int:
        with httpx.Client(base_url=url) as client:
            return client.post(f"/orgs/org_{i % 3}/docs").status_code

    with serve_wsgi(flask_app, threads=8) as url:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(n))) == {201}
        assert auditor.force_flush(timeout=10)
    rows = marks.rows()
    process = auditor.delivery_process
    assert process is not None
    assert len({row["id"] for row in rows}) == len(rows) == n
    assert {row["pid"] for row in rows} == {process.pid}
    seqs = sorted(int(str(row["seq"])) for row in rows)
    assert seqs == list(range(1, n + 1))  # one unbroken chain


def test_a_killed_delivery_process_is_replaced_and_its_losses_counted(
    auditors: Callable[..., Auditor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marks = FileExporter(tmp_path / "pids.jsonl", delay=0.05)
    auditor = auditors(exporters=[marks], batch_size=20)
    _warn._last.clear()  # the warning is rate-limited per process
    _record(auditor, 0, 200)
    process = auditor.delivery_process
    assert process is not None
    assert eventually(lambda: process.pid != 0 and len(marks.rows()) > 0)
    first = process.pid
    os.kill(first, signal.SIGKILL)
    _record(auditor, 200, 100)
    flushed = auditor.force_flush(timeout=30)
    rows = marks.rows()
    pids = {row["pid"] for row in rows}
    assert first in pids
    assert len(pids) == 2
    assert process.children == 2
    delivered = {row["id"] for row in rows}
    stats = auditor.stats()
    assert stats.processed == 300
    # Nothing silently lost: every event was delivered or counted (a batch the dead process had
    # confirmed may also have been re-sent, so both can hold for a few).
    assert len(delivered) + stats.dropped >= 300
    assert stats.dropped > 0
    assert not flushed
    assert "delivery process" in caplog.text
    assert "lost" in caplog.text
    assert auditor.force_flush(timeout=10)  # the next flush has nothing new lost


def test_a_stopped_delivery_process_is_killed_after_the_reply_timeout(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    auditor, process, marks = _started(auditors, tmp_path, batch_size=10)
    process.reply_timeout = 0.5
    _record(auditor, 5, 5)
    assert auditor.force_flush(timeout=5)
    first = process.pid
    os.kill(first, signal.SIGSTOP)  # alive but silent
    try:
        _record(auditor, 10, 10)
        assert eventually(lambda: process.pid not in (0, first), 10)
    finally:
        if _alive(first):
            os.kill(first, signal.SIGCONT)
    assert eventually(lambda: not _alive(first), 5)  # killed and reaped
    auditor.force_flush(timeout=10)
    ids = {row["id"] for row in marks.rows()}
    assert len(ids) == 20  # the unanswered batch went to the next process


def test_a_hung_exporter_in_the_delivery_process_never_blocks_the_app(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    hung = FileExporter(tmp_path / "hung.jsonl", hang=True)
    fine = FileExporter(tmp_path / "fine.jsonl")
    auditor = auditors(exporters=[hung, fine], batch_size=10)
    start = time.monotonic()
    _record(auditor, 0, 1000)
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    assert not auditor.force_flush(timeout=1.0)
    assert time.monotonic() - start < 4.0
    assert eventually(lambda: len(fine.rows()) == 1000)  # the other exporter was not held up


def test_sigterm_and_sigint_do_not_stop_the_delivery_process(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    auditor, process, marks = _started(auditors, tmp_path)
    pid = process.pid
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    _record(auditor, 5, 5)
    assert auditor.force_flush(timeout=5)
    assert process.pid == pid
    assert process.children == 1
    assert len(marks.rows()) == 10


def test_a_forked_app_process_gets_its_own_delivery_process(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    auditor, process, marks = _started(auditors, tmp_path)
    parents_child = process.pid
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # a pre-forking server's worker
        code = 1
        try:
            os.close(read)
            _record(auditor, 100, 5)
            ok = auditor.shutdown(timeout=5)
            os.write(write, f"{int(ok)} {process.children}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "1 1"  # shut down cleanly, with one delivery process of its own
    _record(auditor, 5, 5)
    assert auditor.force_flush(timeout=5)
    rows = marks.rows()
    by_pid: dict[object, int] = {}
    for row in rows:
        by_pid[row["pid"]] = by_pid.get(row["pid"], 0) + 1
    assert by_pid[parents_child] == 10  # the parent's own, still delivered by its process
    assert sorted(by_pid.values()) == [5, 10]
    assert process.pid == parents_child


_EXIT_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from audit_middleware import Auditor
from exporters.log import StructlogExporter

class SlowLog(StructlogExporter):
    def export(self, batch):
        time.sleep(0.05)
        return super().export(batch)

auditor = Auditor(
    delivery="process", exporters=[SlowLog(output={log!r})], environ={{}}, batch_size=128,
    delivery_processes={processes},
)
for i in range(256):
    auditor.record("doc.updated", metadata={{"i": i}})
while len(auditor.delivery_process.pids) < {processes}:  # forked on the first frame
    time.sleep(0.005)
{ending}
"""


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("ending", ["exit", "os-exit"])
def test_when_the_app_process_ends_the_delivery_process_delivers_and_exits(
    tmp_path: Path, ending: str, processes: int
) -> None:
    """``exit``: interpreter exit, the pipeline shuts down at exit. ``os-exit``: no cleanup at
    all, once the delivery processes have confirmed every event queued (they are still
    exporting them, slowly): each sees its socket close (a sibling forked later holds no copy
    of it), delivers what it holds and exits."""
    log = tmp_path / "audit.jsonl"
    pids = "print(*auditor.delivery_process.pids, flush=True)"
    if ending == "exit":
        tail = f"{pids}\nsys.exit(0)"
    else:
        tail = (
            "while auditor.pipeline.stats().exporters[0].exported < 256:\n"
            "    time.sleep(0.005)\n"
            f"{pids}\n"
            "os._exit(0)"
        )
    script = _EXIT_SCRIPT.format(root=str(ROOT), log=str(log), ending=tail, processes=processes)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    children = [int(pid) for pid in result.stdout.split()]
    assert len(children) == processes
    gone = eventually(lambda: not any(_alive(child) for child in children), 15)
    assert gone, "a delivery process did not exit"
    metas = sorted(json.loads(line)["metadata"]["i"] for line in log.read_bytes().splitlines())
    assert metas == list(range(256))


def test_the_delivery_process_holds_none_of_the_servers_sockets(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    """A server's listening socket and accepted connection, open when the delivery process is
    forked, close when the server closes them: the client sees the end of the response, and
    the port can be bound again."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    _started(auditors, tmp_path)
    accepted.close()
    listener.close()
    client.settimeout(5)
    try:
        assert client.recv(1) == b""  # EOF at once, not when the delivery process exits
    finally:
        client.close()
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))  # EADDRINUSE if the delivery process held it
        again.listen()


def test_an_exporters_pipe_opened_before_the_fork_keeps_working(
    auditors: Callable[..., Auditor],
) -> None:
    """What the exporters opened stays theirs in the delivery process: here a pipe, as a
    container's log collector would read."""
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as output:
            auditor = auditors(exporters=[StructlogExporter(output=output)])
            _record(auditor, 0, 3)
            assert auditor.force_flush(timeout=5)
            process = auditor.delivery_process
            assert process is not None
            assert process.pid != 0
            received = _read_lines(read, 3)
            auditor.shutdown(timeout=5)
    finally:
        os.close(read)
    assert [json.loads(line)["metadata"]["i"] for line in received] == [0, 1, 2]


def _read_lines(fd: int, n: int, timeout: float = 5.0) -> list[bytes]:
    """``n`` lines from ``fd``, or an assertion error once ``timeout`` passed without them."""
    data = b""
    deadline = time.monotonic() + timeout
    while (got := data.count(b"\n")) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"{got} of {n} lines arrived"
        data += os.read(fd, 65536)
    return data.splitlines()


def test_delivery_is_configured_by_keyword_or_environment() -> None:
    assert Auditor(exporters=[], environ={}).delivery_process is None
    auditor = Auditor(exporters=[], environ={"AUDIT_LOG_DELIVERY": "process"})
    try:
        assert auditor.delivery_process is not None
        assert auditor.chain is not None
        assert auditor._chain_here is None
    finally:
        auditor.shutdown(timeout=2)
    keyword = Auditor(exporters=[], delivery="thread", environ={"AUDIT_LOG_DELIVERY": "process"})
    assert keyword.delivery_process is None
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_DELIVERY"):
        Auditor(exporters=[], environ={"AUDIT_LOG_DELIVERY": "subprocess"})


def test_strict_mode_needs_thread_delivery(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_DELIVERY=thread"):
        Auditor(
            exporters=["archive"],
            strict=True,
            delivery="process",
            environ={
                "AUDIT_LOG_ARCHIVE_URL": str(tmp_path / "archive"),
                "AUDIT_LOG_SPOOL_DIR": str(tmp_path / "spool"),
            },
        )


def test_no_delivery_process_until_the_first_batch(auditors: Callable[..., Auditor]) -> None:
    auditor = auditors(exporters=[])
    process = auditor.delivery_process
    assert process is not None
    assert process.pid == 0
    assert auditor.force_flush(timeout=2)
    assert process.pid == 0
    assert process.children == 0


# -- several delivery processes -------------------------------------------------------------------


def test_delivery_processes_are_configured_by_keyword_or_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"AUDIT_LOG_DELIVERY": "process", "AUDIT_LOG_DELIVERY_PROCESSES": "3"}
    for auditor in (
        Auditor(exporters=[], environ=env),
        Auditor(exporters=[], delivery="process", delivery_processes=3, environ={}),
    ):
        try:
            assert auditor.delivery_process is not None
            assert auditor.delivery_process.processes == 3
        finally:
            auditor.shutdown(timeout=2)
    default = Auditor(exporters=[], delivery="process", environ={})
    try:
        assert default.delivery_process is not None
        assert default.delivery_process.processes == 1
    finally:
        default.shutdown(timeout=2)
    with caplog.at_level(logging.WARNING, logger="audit_middleware"):
        Auditor(exporters=[], delivery_processes=2, environ={}).shutdown(timeout=2)
    assert "AUDIT_LOG_DELIVERY_PROCESSES=2 has no effect with thread delivery" in caplog.text
    for bad in ("0", "-1", "two", "65"):
        with pytest.raises(AuditConfigError, match="AUDIT_LOG_DELIVERY_PROCESSES"):
            Auditor(exporters=[], environ={**env, "AUDIT_LOG_DELIVERY_PROCESSES": bad})


def test_two_delivery_processes_split_the_batches_and_deliver_every_event_once(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    marks = FileExporter(tmp_path / "pids.jsonl")
    auditor = auditors(
        exporters=[StructlogExporter(output=str(log)), marks],
        delivery_processes=2,
        batch_size=500,
        queue_size=10_000,
    )
    n = 3000
    _record(auditor, 0, n)
    assert auditor.force_flush(timeout=20)
    process = auditor.delivery_process
    assert process is not None
    pids = set(process.pids)
    assert len(pids) == 2
    assert os.getpid() not in pids
    rows = marks.rows()
    assert sorted(str(row["id"]) for row in rows) == sorted({str(row["id"]) for row in rows})
    assert len(rows) == n
    by_pid = {pid: [row for row in rows if row["pid"] == pid] for pid in pids}
    assert all(len(part) >= n // 4 for part in by_pid.values()), {
        pid: len(part) for pid, part in by_pid.items()
    }
    for part in by_pid.values():  # each process numbers its own stream from 1, without gaps
        assert sorted(int(str(row["seq"])) for row in part) == list(range(1, len(part) + 1))
    lines = log.read_bytes().splitlines()
    assert len(lines) == n
    report = verify_events(lines)
    assert report.ok, report.findings
    assert report.streams == 2
    _assert_all_exported(auditor, n)


def test_a_batch_too_small_to_split_goes_whole_to_the_next_process_in_turn(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    marks = FileExporter(tmp_path / "pids.jsonl")
    # Batches by size only (no interval): each round of 10 records is one batch of 10.
    auditor = auditors(exporters=[marks], delivery_processes=2, batch_size=10, batch_interval=60)
    for first in range(0, 40, 10):
        _record(auditor, first, 10)
        assert auditor.force_flush(timeout=10)
    rows = marks.rows()
    assert len({row["id"] for row in rows}) == 40
    counts = [sum(1 for row in rows if row["pid"] == pid) for pid in {row["pid"] for row in rows}]
    assert sorted(counts) == [20, 20]  # whole batches of 10, taking turns


def test_one_of_two_killed_delivery_processes_is_replaced_and_the_other_goes_on(
    auditors: Callable[..., Auditor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marks = FileExporter(tmp_path / "pids.jsonl")
    auditor = auditors(exporters=[marks], delivery_processes=2, batch_size=200)
    _record(auditor, 0, 400)
    assert auditor.force_flush(timeout=10)
    process = auditor.delivery_process
    assert process is not None
    killed, survivor = process.pids
    _warn._last.clear()  # the warning is rate-limited per process
    os.kill(killed, signal.SIGKILL)
    assert eventually(lambda: not _alive(killed), 5)
    _record(auditor, 400, 400)
    auditor.force_flush(timeout=20)  # False if the dead one had events undelivered
    assert auditor.force_flush(timeout=20)
    assert survivor in process.pids
    assert killed not in process.pids
    assert len(process.pids) == 2
    assert process.children == 3
    assert "lost" in caplog.text
    rows = marks.rows()
    assert len({row["id"] for row in rows}) == len(rows) == 800  # its part sent again, alone
    kept = sorted(int(str(row["seq"])) for row in rows if row["pid"] == survivor)
    assert kept == list(range(1, len(kept) + 1))  # the survivor's stream never broke
    assert auditor.stats().dropped == 0


def test_two_delivery_processes_archive_every_event_once_under_their_own_writers(
    auditors: Callable[..., Auditor], tmp_path: Path
) -> None:
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool", max_age=60)
    auditor = auditors(exporters=[archive], delivery_processes=2, batch_size=400)
    n = 2400
    for i in range(n):
        auditor.record("doc.updated", org_id=f"org_{i % 3}", target=Target("doc", str(i)))
    assert auditor.force_flush(timeout=30)
    objects = sorted((tmp_path / "archive").rglob("*.jsonl.gz"))
    lines = [line for path in objects for line in gzip_lines(path)]
    targets = [json.loads(line)["target"]["id"] for line in lines]
    assert sorted(targets, key=int) == [str(i) for i in range(n)]
    report = verify_events(lines)
    assert report.ok, report.findings
    assert report.streams == 2
    for org in ("org_0", "org_1", "org_2"):  # each process wrote its own object per partition
        in_org = [p for p in objects if f"org_id={org}/" in p.as_posix()]
        assert len(in_org) == 2
        assert len({p.name for p in in_org}) == 2
    assert auditor.stats().dropped == 0


def gzip_lines(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).splitlines()


def test_two_delivery_processes_writing_one_pipe_never_interleave_a_line(
    auditors: Callable[..., Auditor],
) -> None:
    """A pipe takes a write of at most ``PIPE_BUF`` bytes whole; a longer one can be split
    when the pipe is full, and another process's write can land in between. Lines of two
    delivery processes, written while the reader lags, arrive whole."""
    read, write = os.pipe()
    n = 2000
    try:
        with os.fdopen(write, "wb") as output:
            auditor = auditors(
                exporters=[StructlogExporter(output=output)],
                delivery_processes=2,
                batch_size=500,
                queue_size=n,
            )
            for i in range(n):
                auditor.record("doc.updated", metadata={"i": i, "pad": "x" * (i % 700)})
            data = b""
            deadline = time.monotonic() + 30
            while data.count(b"\n") < n and time.monotonic() < deadline:
                time.sleep(0.001)  # a slow reader: the pipe fills, writers wait mid-batch
                if select.select([read], [], [], 0.5)[0]:
                    data += os.read(read, 4096)
            assert auditor.force_flush(timeout=10)
            process = auditor.delivery_process
            assert process is not None
            assert len(process.pids) == 2
            auditor.shutdown(timeout=5)
    finally:
        os.close(read)
    lines = data.splitlines()
    assert sorted(json.loads(line)["metadata"]["i"] for line in lines) == list(range(n))
