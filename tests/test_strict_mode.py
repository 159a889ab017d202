"""Strict mode: no client receives a completed response whose audit event could be lost."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditConfigError, AuditMiddleware, AuditWSGIMiddleware
from exporters import InMemoryExporter
from exporters.archive import ArchiveExporter
from tests.conftest import MemoryAuditor, eventually

ROOT = Path(__file__).resolve().parent.parent

_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from audit_middleware import AuditMiddleware
from exporters import InMemoryExporter
from exporters.archive import ArchiveExporter

async def write(request):
    return PlainTextResponse("stored")

archive = ArchiveExporter(sys.argv[1], spool_dir=sys.argv[2], max_age=3600)
app = AuditMiddleware(
    Starlette(routes=[Route("/docs", write, methods=["POST"])]),
    exporters=[archive], strict=True, batch_interval=3600, environ={},
)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _archived_request_ids(root: Path) -> list[str]:
    return [
        orjson.loads(line)["request"]["id"]
        for path in root.rglob("*.jsonl.gz")
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]


def test_sigkill_mid_load_loses_no_completed_request(tmp_path: Path) -> None:
    """The server dies by SIGKILL under load; every response a client completed is archived."""
    archive, spool, port = tmp_path / "archive", tmp_path / "spool", _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(archive), str(spool), str(port)], cwd=ROOT
    )
    completed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)

        def client(worker: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    rid = f"req-{worker}-{n}"
                    try:
                        response = c.post("/docs", headers={"x-request-id": rid})
                    except httpx.TransportError:
                        return
                    if response.status_code == 200 and response.text == "stored":
                        with lock:
                            completed.append(rid)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(completed) < 150:
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert not list(archive.rglob("*.jsonl.gz"))  # nothing had been uploaded: all in the spool
    restarted = ArchiveExporter(str(archive), spool_dir=spool)
    assert restarted.force_flush(timeout=20)
    restarted.shutdown(timeout=5)
    archived = _archived_request_ids(archive)
    assert len(archived) == len(set(archived))  # each event once
    missing = set(completed) - set(archived)
    assert not missing, (
        f"{len(missing)} completed requests not archived, e.g. {sorted(missing)[:3]}"
    )


def test_strict_mode_needs_a_durable_exporter(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="strict mode"):
        AuditMiddleware(_app(), strict=True, environ={}, exporters=["log"])
    memory_only = ArchiveExporter(str(tmp_path / "a"))  # no spool directory: not durable
    with pytest.raises(AuditConfigError, match="spool directory"):
        AuditMiddleware(_app(), strict=True, environ={}, exporters=[memory_only])


def _app() -> Starlette:
    async def write(request: Request) -> PlainTextResponse:
        return PlainTextResponse("stored")

    return Starlette(routes=[Route("/docs", write, methods=["POST"])])


def test_strict_events_reach_other_exporters_once_and_the_archive_once(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool")
    memory = InMemoryExporter()
    auditor = make_auditor(strict=True, exporters=[archive, memory])
    client = TestClient(AuditMiddleware(_app(), auditor=auditor))
    for n in range(5):
        client.post("/docs", headers={"x-request-id": f"r{n}"})
    assert auditor.force_flush(timeout=10)
    expected = [f"r{n}" for n in range(5)]
    assert sorted(_archived_request_ids(tmp_path / "archive")) == expected
    assert sorted(e.request.id for e in memory.events if e.request) == expected


def test_wsgi_strict_holds_the_last_chunk_until_the_event_is_on_disk(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool")
    auditor = make_auditor(strict=True, exporters=[archive])
    order: list[str] = []
    original = archive.write_through

    def spy(events: Any) -> None:
        original(events)
        order.append("spooled")

    archive.write_through = spy  # type: ignore[method-assign]

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"a", b"b", b"c"]

    middleware = AuditWSGIMiddleware(app, auditor=auditor)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "wsgi.input": None}
    body = middleware(environ, lambda *a: None)
    for chunk in body:
        order.append(chunk.decode())
    body.close()  # type: ignore[attr-defined]
    assert order == ["a", "b", "spooled", "c"]


def _strict_writers(
    archive: ArchiveExporter, events: list[Any], held: threading.Event, release: threading.Event
) -> list[BaseException | None]:
    """One thread per event calling ``write_through``: the first holds in its fsync (``held``)
    until the others queue up behind it, then ``release``; what each call raised."""
    results: list[BaseException | None] = [None] * len(events)

    def write(i: int) -> None:
        try:
            archive.write_through([events[i]])
        except BaseException as exc:  # reported to the test
            results[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(events))]
    threads[0].start()
    assert held.wait(5), "the first strict write never reached its fsync"
    for thread in threads[1:]:
        thread.start()
    assert eventually(lambda: len(archive._strict_waiting) == len(events) - 1)
    release.set()
    for thread in threads:
        thread.join(10)
    return results


def _events(make_auditor: Callable[..., MemoryAuditor], n: int) -> list[Any]:
    auditor = make_auditor()
    for i in range(n):
        auditor.record("doc.updated", org_id=f"org_{i % 3}")
    return list(auditor.wait_for(n))


def test_concurrent_strict_writes_share_one_journal_fsync(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events(make_auditor, 9)
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool", max_age=3600)
    archive.write_through(events[:1])  # the spool and its journal exist
    synced: list[int] = []
    held, release = threading.Event(), threading.Event()
    fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        synced.append(fd)
        held.set()
        release.wait(5)  # the first write holds here while the others queue up
        fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    results = _strict_writers(archive, events[1:], held, release)
    monkeypatch.undo()
    assert results == [None] * 8
    assert len(synced) == 2  # the first write, then the seven that waited behind it, at once
    assert archive.stats().spooled_events == 9
    archive.shutdown(timeout=5)


def test_a_failed_group_write_fails_every_strict_call_in_it(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events(make_auditor, 5)
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool", max_age=3600)
    archive.write_through(events[:1])
    held, release = threading.Event(), threading.Event()
    fsync, calls = os.fsync, [0]

    def failing_second_fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 1:
            held.set()
            release.wait(5)
            fsync(fd)
            return
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_second_fsync)
    results = _strict_writers(archive, events[1:], held, release)
    monkeypatch.undo()
    assert results[0] is None
    assert all(isinstance(exc, OSError) for exc in results[1:])
    assert archive.stats().spooled_events == 2  # the failed group's events were not counted
    archive.shutdown(timeout=5)
