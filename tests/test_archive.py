"""The archive exporter: partitioned objects in a directory or a real S3 endpoint (moto)."""

from __future__ import annotations

import gzip
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware import AuditConfigError, Auditor, ExportResult, Target
from exporters import InMemoryExporter
from exporters._object_store import S3Store
from exporters.archive import GLOBAL_ORG, ArchiveExporter
from tests.conftest import MemoryAuditor, wait_until
from tests.s3_server import S3Endpoint

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "audit-archive"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[S3Endpoint]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    endpoint = S3Endpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def s3(s3_endpoint: S3Endpoint) -> S3Endpoint:
    s3_endpoint.reset()
    s3_endpoint.client().create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    s3_endpoint.client().put_object_lock_configuration(
        Bucket=BUCKET,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    return s3_endpoint


def _objects(s3: S3Endpoint) -> dict[str, list[dict[str, Any]]]:
    client = s3.client()
    out: dict[str, list[dict[str, Any]]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            if "/_integrity/" in item["Key"]:  # digests and public keys
                continue
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            out[item["Key"]] = [orjson.loads(x) for x in gzip.decompress(body).splitlines()]
    return out


def _local_objects(root: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        str(p.relative_to(root)): [
            orjson.loads(x) for x in gzip.decompress(p.read_bytes()).splitlines()
        ]
        for p in root.rglob("*.jsonl.gz")
    }


def _record(auditor: Auditor, n: int, *, org: str | None = "org_a") -> list[str]:
    for i in range(n):
        auditor.record("doc.updated", org_id=org, target=Target("doc", str(i)))
    return []


def test_local_directory_layout_partitions_and_unique_keys(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    archive = ArchiveExporter(str(tmp_path / "archive"), max_events=4)
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 10, org="org_a")
    _record(auditor, 3, org=None)
    _record(auditor, 2, org="weird/org id")
    assert auditor.force_flush(timeout=10)
    objects = _local_objects(tmp_path / "archive")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    counts: dict[str, int] = {}
    for key, rows in objects.items():
        org_part, dt_part, name = key.split("/")
        assert dt_part == f"dt={day}"
        assert name.endswith(".jsonl.gz")
        counts[org_part] = counts.get(org_part, 0) + len(rows)
    assert counts == {"org_id=org_a": 10, f"org_id={GLOBAL_ORG}": 3, "org_id=weird%2Forg%20id": 2}
    assert max(len(rows) for rows in objects.values()) <= 4
    assert archive.stats().uploaded_events == 15


def test_s3_objects_carry_checksums_and_object_lock(
    make_auditor: Callable[..., MemoryAuditor], s3: S3Endpoint
) -> None:
    archive = ArchiveExporter(f"s3://{BUCKET}/audit", s3_client=s3.client(), retention_days=3)
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 5)
    assert auditor.force_flush(timeout=10)
    objects = _objects(s3)
    assert sum(len(rows) for rows in objects.values()) == 5
    (key,) = objects
    assert key.startswith("audit/org_id=org_a/dt=")
    head = s3.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    days = (head["ObjectLockRetainUntilDate"].timestamp() - time.time()) / 86400
    assert 2.9 < days <= 3.0
    assert "ChecksumSHA256" in head


def test_s3_outage_loses_nothing(
    make_auditor: Callable[..., MemoryAuditor], s3: S3Endpoint, tmp_path: Path
) -> None:
    archive = ArchiveExporter(
        f"s3://{BUCKET}/audit", s3_client=s3.client(), spool_dir=tmp_path / "spool", max_age=0.2
    )
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 20)
    assert auditor.force_flush(timeout=10)
    s3.stop()
    try:
        _record(auditor, 30)
        assert auditor.force_flush(timeout=1) is False  # honest: not delivered while S3 is down
        assert archive.stats().pending_objects >= 1
        assert any((tmp_path / "spool").rglob("*.obj"))  # on disk, not only in memory
    finally:
        s3.start()
    assert auditor.force_flush(timeout=30)
    ids = [row["id"] for rows in _objects(s3).values() for row in rows]
    assert len(ids) == len(set(ids)) == 50
    assert archive.stats().retries >= 1


@pytest.mark.parametrize("processes", [1, 2])
def test_process_delivery_archives_to_s3_through_an_outage(
    make_auditor: Callable[..., MemoryAuditor], s3: S3Endpoint, tmp_path: Path, processes: int
) -> None:
    """The archive runs in the delivery processes, with the S3 client your process made (its
    pooled connection, used at start-up, is not shared: each delivery process reconnects)."""
    archive = ArchiveExporter(
        f"s3://{BUCKET}/audit", s3_client=s3.client(), spool_dir=tmp_path / "spool", max_age=0.2
    )
    auditor = make_auditor(
        exporters=[archive], delivery="process", delivery_processes=processes, batch_size=10
    )
    for _ in range(2):  # a batch of 10 goes whole to the next delivery process in turn
        _record(auditor, 10)
        assert auditor.force_flush(timeout=10)
    process = auditor.delivery_process
    assert process is not None
    assert len(process.pids) == processes
    assert os.getpid() not in process.pids
    assert archive.stats().uploaded_events == 0  # not here: in the delivery process
    s3.stop()
    try:
        _record(auditor, 30)
        assert auditor.force_flush(timeout=1) is False
    finally:
        s3.start()
    assert auditor.force_flush(timeout=30)
    objects = _objects(s3)
    ids = [row["id"] for rows in objects.values() for row in rows]
    assert len(ids) == len(set(ids)) == 50
    key = next(iter(objects))
    head = s3.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    stats = auditor.stats()
    assert stats.dropped == 0
    assert [(e.name, e.exported) for e in stats.exporters] == [("ArchiveExporter", 50)]


def test_spool_cap_refuses_and_counts(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    class DownStore:
        description = "down"

        def put(self, key: str, body: bytes) -> None:
            raise ConnectionError("down")

        def exists(self, key: str) -> bool:
            return False

    archive = ArchiveExporter(
        "x", store=DownStore(), spool_dir=tmp_path / "spool", spool_max_bytes=4000
    )
    auditor = make_auditor(exporters=[archive], export_retries=0)
    _record(auditor, 40)
    auditor.force_flush(timeout=2)
    stats = auditor.stats()
    refused = archive.stats().refused_events
    assert refused > 0
    assert stats.exporters[0].dropped == refused  # the pipeline counted every refused event
    assert archive.stats().spooled_events + refused == 40
    assert archive.stats().spool_bytes <= 4000


def test_an_export_after_shutdown_is_refused_not_written_to_a_released_spool(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lane outliving the shutdown's deadline exports late: FAILURE (the pipeline counts
    it), and no journal appears in the directory the next process may already be adopting."""
    memory = InMemoryExporter()
    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool")
    auditor = make_auditor(exporters=[archive, memory])
    auditor.memory = memory
    _record(auditor, 3)
    events = auditor.wait_for(3)
    archive.shutdown(timeout=10)
    journals = sorted((tmp_path / "spool").rglob("*.jnl"))
    with caplog.at_level(logging.WARNING, logger="audit_middleware"):
        assert archive.export(events) is ExportResult.FAILURE
    assert sorted((tmp_path / "spool").rglob("*.jnl")) == journals
    assert "audit archive was shut down: refused 3 events" in caplog.text
    assert "Traceback" not in caplog.text
    assert archive.stats().uploaded_events == 3


_WRITER = """
import os, sys, time
from audit_middleware import AuditConfigError, Auditor, Target
from exporters.archive import ArchiveExporter
archive = ArchiveExporter(sys.argv[1], spool_dir=sys.argv[2], max_age=3600)
a = Auditor(exporters=[archive], batch_interval=0.01, environ={})
n = int(sys.argv[3])
for i in range(n):
    a.record("doc.updated", org_id="org_k", target=Target("doc", f"{os.getpid()}-{i}"))
deadline = time.monotonic() + 30
while archive.stats().spooled_events < n and time.monotonic() < deadline:
    time.sleep(0.01)  # spooled (fsynced to disk), but younger than max_age: not uploaded
print("spooled", flush=True)
time.sleep(60)
"""


def test_sigkill_then_restart_adopts_the_dead_spool(tmp_path: Path) -> None:
    archive_dir = tmp_path / "archive"
    spool = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(archive_dir), str(spool), "25"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "spooled"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert not list(archive_dir.rglob("*.jsonl.gz"))  # nothing uploaded before the kill
    survivor = ArchiveExporter(str(archive_dir), spool_dir=spool)
    assert survivor.force_flush(timeout=10)
    assert survivor.stats().adopted_files >= 1
    rows = [r for rs in _local_objects(archive_dir).values() for r in rs]
    assert sorted(r["target"]["id"] for r in rows) == sorted(f"{proc.pid}-{i}" for i in range(25))
    survivor.shutdown(timeout=5)


def test_a_segment_its_writer_died_before_filling_is_dropped_not_uploaded(
    tmp_path: Path,
) -> None:
    """A dead writer's segment holding only its header (or one torn line) becomes no object:
    an empty object would be in no digest, and ``verify`` would call it inserted."""
    from exporters._spool import Spool

    spool_dir, archive_dir = tmp_path / "spool", tmp_path / "archive"
    dead = Spool(spool_dir, max_bytes=1 << 20, writer="dead-1", encode=gzip.compress)
    dead.append("org_id=a/dt=2026-11-27", lambda: "org_id=a/dt=2026-11-27/dead-1-1.jsonl.gz",
                [], now=time.time())  # fmt: skip
    dead.append("org_id=b/dt=2026-11-27", lambda: "org_id=b/dt=2026-11-27/dead-1-2.jsonl.gz",
                [b'{"id": "torn'], now=time.time())  # fmt: skip
    (journal,) = (spool_dir / "dead-1").glob("*.jnl")
    assert journal.read_bytes().endswith(b'{"id": "torn')
    dead.close()  # its lock is free, as after SIGKILL
    survivor = ArchiveExporter(str(archive_dir), spool_dir=spool_dir)
    try:
        assert survivor.force_flush(timeout=10)
        assert survivor.stats().adopted_files == 2
        assert not list(archive_dir.rglob("*.jsonl.gz"))
        assert survivor.stats().spool_bytes == 0
    finally:
        survivor.shutdown(timeout=5)
    assert not [p for p in spool_dir.rglob("*") if p.suffix in (".seg", ".obj", ".jnl")]


def test_two_processes_write_at_once_without_collisions(tmp_path: Path) -> None:
    archive_dir = tmp_path / "archive"
    script = _WRITER.replace("time.sleep(60)", "archive.force_flush(10)")
    procs = [
        subprocess.run(
            [sys.executable, "-c", script, str(archive_dir), str(tmp_path / "spool"), "300"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        for _ in range(1)
    ]
    # start two writers truly concurrently
    running = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(archive_dir), str(tmp_path / "spool"), "300"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    for proc in running:
        assert proc.wait(timeout=60) == 0
    assert all(p.returncode == 0 for p in procs)
    objects = _local_objects(archive_dir)
    ids = [r["id"] for rows in objects.values() for r in rows]
    assert len(ids) == len(set(ids)) == 900
    writers = {key.rsplit("/", 1)[1].rsplit("-", 1)[0] for key in objects}
    assert len(writers) == 3


def test_misconfigured_bucket_is_reported_at_start_up(
    make_auditor: Callable[..., MemoryAuditor],
    s3: S3Endpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s3.client().create_bucket(Bucket="plain-bucket")
    archive = ArchiveExporter("s3://plain-bucket/audit", s3_client=s3.client())
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 1)
    assert auditor.force_flush(timeout=10)
    messages = [r.getMessage() for r in caplog.records if r.name == "audit_middleware"]
    assert any("versioning" in m.lower() for m in messages), messages
    assert any("object lock" in m.lower() for m in messages), messages


def test_archive_selected_by_name_from_the_environment(tmp_path: Path) -> None:
    env = {
        "AUDIT_LOG_EXPORTERS": "archive",
        "AUDIT_LOG_ARCHIVE_URL": str(tmp_path / "archive"),
        "AUDIT_LOG_SPOOL_DIR": str(tmp_path / "spool"),
        "AUDIT_LOG_ARCHIVE_MAX_EVENTS": "2",
    }
    auditor = Auditor(environ=env, batch_interval=0.01)
    _record(auditor, 5)
    assert auditor.force_flush(timeout=10)
    objects = _local_objects(tmp_path / "archive")
    assert sum(len(rows) for rows in objects.values()) == 5
    assert len(objects) == 3
    auditor.shutdown(timeout=5)


def _require_isal() -> None:
    try:
        import isal  # noqa: F401
    except ImportError:
        pytest.fail("the ISA-L gzip engine is not installed: pip install isal (in the dev extra)")


@pytest.mark.parametrize("engine", ["isal", "zlib"])
def test_the_gzip_level_is_configurable_and_changes_only_the_size(
    tmp_path: Path, engine: str
) -> None:
    if engine == "isal":
        _require_isal()
    sizes = {}
    for level in ("1", "9"):
        env = {
            "AUDIT_LOG_EXPORTERS": "archive",
            "AUDIT_LOG_ARCHIVE_URL": str(tmp_path / level),
            "AUDIT_LOG_ARCHIVE_GZIP_LEVEL": level,
            "AUDIT_LOG_ARCHIVE_GZIP_ENGINE": engine,
            "AUDIT_LOG_INTEGRITY": "false",  # the same bytes in both archives
        }
        auditor = Auditor(environ=env, batch_interval=0.01)
        for i in range(2000):
            auditor.record(
                "doc.updated", org_id="org_a", target=Target("doc", "d"), metadata={"i": i % 3}
            )
        assert auditor.force_flush(timeout=10)
        auditor.shutdown(timeout=5)
        (path,) = (tmp_path / level).rglob("*.jsonl.gz")
        sizes[level] = path.stat().st_size
        rows = [orjson.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
        assert [r["metadata"]["i"] for r in rows] == [i % 3 for i in range(2000)]
    assert sizes["9"] < sizes["1"]
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_ARCHIVE_GZIP_LEVEL"):
        Auditor(environ={**env, "AUDIT_LOG_ARCHIVE_GZIP_LEVEL": "0"})
    with pytest.raises(ValueError, match="gzip_level"):
        ArchiveExporter(str(tmp_path / "x"), gzip_level=10)


def test_both_gzip_engines_write_standard_gzip_of_the_same_lines(tmp_path: Path) -> None:
    _require_isal()
    lines: dict[str, list[bytes]] = {}
    for engine in ("auto", "isal", "zlib"):
        exporter = ArchiveExporter(str(tmp_path / engine), gzip_engine=engine)
        assert exporter.gzip_engine == ("zlib" if engine == "zlib" else "isal")
        auditor = Auditor(exporters=[exporter], integrity=False, environ={}, batch_interval=0.01)
        for i in range(300):
            auditor.record("doc.updated", org_id="org_a", metadata={"i": i, "text": "x" * (i % 50)})
        assert auditor.force_flush(timeout=10)
        auditor.shutdown(timeout=5)
        (path,) = (tmp_path / engine).rglob("*.jsonl.gz")
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b"  # a gzip member, which Athena and zcat read
        lines[engine] = gzip.decompress(raw).splitlines()
    metadata = {e: [orjson.loads(x)["metadata"] for x in rows] for e, rows in lines.items()}
    assert metadata["isal"] == metadata["zlib"] == metadata["auto"]
    assert [m["i"] for m in metadata["isal"]] == list(range(300))


def test_a_missing_isal_engine_is_a_clear_error_and_auto_falls_back_to_zlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # as if not installed: imports fail
    with pytest.raises(ImportError, match=r"pip install 'audit-log-middleware\[isal\]'"):
        ArchiveExporter(str(tmp_path / "a"), gzip_engine="isal")
    assert ArchiveExporter(str(tmp_path / "b")).gzip_engine == "zlib"
    with pytest.raises(ValueError, match="gzip engine"):
        ArchiveExporter(str(tmp_path / "c"), gzip_engine="lz4")
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_ARCHIVE_GZIP_ENGINE"):
        Auditor(environ={"AUDIT_LOG_ARCHIVE_GZIP_ENGINE": "lz4"})


def test_isal_levels_never_compress_less_as_the_setting_rises() -> None:
    from exporters._gzip import isal_level

    levels = [isal_level(level) for level in range(1, 10)]
    assert levels == sorted(levels)
    assert levels[0] == 0
    assert levels[2] == 1  # the default, 3, is ISA-L's 1
    assert levels[-1] == 3


def test_s3_down_for_30_seconds_under_load_loses_nothing(s3: S3Endpoint, tmp_path: Path) -> None:
    """Requests keep flowing through uvicorn while S3 is stopped for 30 s, then restarted:
    every acknowledged request's event is in the archive exactly once (by event id)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from audit_middleware import AuditMiddleware
    from tests.conftest import serve

    async def write(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    archive = ArchiveExporter(
        f"s3://{BUCKET}/audit", s3_client=s3.client(), spool_dir=tmp_path / "spool", max_age=0.5
    )
    app = AuditMiddleware(
        Starlette(routes=[Route("/docs", write, methods=["POST"])]),
        exporters=[archive],
        batch_interval=0.05,
        environ={},
    )
    acknowledged: list[str] = []
    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:

        def burst(label: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                rid = f"{label}-{n}"
                if client.post("/docs", headers={"x-request-id": rid}).status_code == 200:
                    acknowledged.append(rid)
                n += 1
                time.sleep(0.005)

        burst("before", 2)
        s3.stop()
        try:
            burst("during", 30)
            assert archive.stats().pending_objects >= 1  # waiting on disk, not lost
        finally:
            s3.start()
        burst("after", 2)
        assert app.auditor.force_flush(timeout=60)
    app.auditor.shutdown(timeout=10)
    rows = [row for rows in _objects(s3).values() for row in rows]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))
    assert sorted(row["request"]["id"] for row in rows) == sorted(acknowledged)
    assert archive.stats().retries >= 1


def test_parquet_objects_round_trip_with_hive_partitions(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    import pyarrow.dataset as pads

    from exporters._parquet import decode_parquet

    archive = ArchiveExporter(str(tmp_path / "archive"), format="parquet", max_events=3)
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 5, org="org_p")
    _record(auditor, 2, org=None)
    assert auditor.force_flush(timeout=10)
    files = sorted((tmp_path / "archive").rglob("*.parquet"))
    assert len(files) == 3  # 3 + 2 for org_p, 2 global
    rows = [row for f in files for row in decode_parquet(f.read_bytes())]
    assert sorted(r["target"]["id"] for r in rows) == ["0", "0", "1", "1", "2", "3", "4"]
    dataset = pads.dataset(tmp_path / "archive", format="parquet", partitioning="hive")
    table = dataset.to_table(filter=pads.field("org_id") == "org_p")
    assert table.num_rows == 5
    assert archive.stats().uploaded_events == 7


def test_uvicorn_workers_write_concurrently_without_collisions(tmp_path: Path) -> None:
    """Two uvicorn worker processes archive at once, with no coordination between them."""
    import socket as socket_module
    import threading

    import httpx

    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    archive_dir = tmp_path / "archive"
    env = {
        **os.environ,
        "AUDIT_LOG_EXPORTERS": "archive",
        "AUDIT_LOG_ARCHIVE_URL": str(archive_dir),
        "AUDIT_LOG_SPOOL_DIR": str(tmp_path / "spool"),
        "AUDIT_LOG_ARCHIVE_MAX_EVENTS": "50",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.apps.archive_app:app", "--workers", "2",
         "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    acknowledged: list[str] = []
    lock = threading.Lock()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)

        def client(worker: int) -> None:
            for n in range(50):  # a new connection each time spreads the load over workers
                rid = f"w{worker}-{n}"
                response = httpx.post(
                    f"http://127.0.0.1:{port}/docs", headers={"x-request-id": rid}, timeout=5
                )
                if response.status_code == 200:
                    with lock:
                        acknowledged.append(rid)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: each worker flushes at exit
        server.wait(timeout=30)
    objects = _local_objects(archive_dir)
    rows = [row for rows in objects.values() for row in rows]
    assert len({row["id"] for row in rows}) == len(rows)
    assert sorted(row["request"]["id"] for row in rows) == sorted(acknowledged)
    assert len(acknowledged) == 400
    writers = {key.rsplit("/", 1)[1].rsplit("-", 1)[0] for key in objects}
    assert len(writers) == 2  # one writer per worker process, keys never shared


def test_polling_stats_while_exporting_never_deadlocks(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    import threading

    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool", max_events=7)
    auditor = make_auditor(exporters=[archive])
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            archive.stats()

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(2)]
    for t in pollers:
        t.start()
    try:
        for day in range(30):  # many new segments: the path that used to take locks in reverse
            auditor.record("doc.updated", org_id=f"org_{day}")
        assert auditor.force_flush(timeout=15)
    finally:
        stop.set()
        for t in pollers:
            t.join(timeout=5)
    assert archive.stats().uploaded_events == 30


def test_a_flush_uploads_each_object_while_the_next_is_compressed(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush seals every partition (one per org and day); each object is uploaded while the
    next is compressed: here the second compression waits for the first upload."""
    import threading

    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool")
    uploaded = threading.Event()
    put = archive.store.put

    def put_and_note(key: str, body: bytes) -> None:
        put(key, body)
        uploaded.set()

    monkeypatch.setattr(archive.store, "put", put_and_note)
    spool = archive._spool
    assert spool is not None
    encode = spool.encode
    uploaded_meanwhile: list[bool] = []

    def encode_after_an_upload(raw: bytes) -> bytes:
        if b'"org_b"' in raw:
            uploaded_meanwhile.append(uploaded.wait(10))
        return encode(raw)

    spool.encode = encode_after_an_upload
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 3, org="org_a")
    _record(auditor, 2, org="org_b")
    assert auditor.force_flush(timeout=30)
    assert uploaded_meanwhile == [True]
    objects = _local_objects(tmp_path / "archive")
    assert {key.split("/")[0]: len(rows) for key, rows in objects.items()} == {
        "org_id=org_a": 3,
        "org_id=org_b": 2,
    }


class _GatedStore:
    """A store whose uploads wait, up to ``wait`` seconds, until ``together`` of them are in
    progress at once, and remember the most that ever were; ``fail_first`` uploads raise."""

    description = "gated"

    def __init__(self, together: int, fail_first: int = 0, wait: float = 10.0) -> None:
        import threading

        self.together = together
        self.wait = wait
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.active = self.most = self.calls = 0
        self.objects: dict[str, bytes] = {}
        self.puts: dict[str, int] = {}

    def put(self, key: str, body: bytes) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail_first:
                raise ConnectionError("the store is down")
            self.active += 1
            self.most = max(self.most, self.active)
            self.arrived.notify_all()
            self.arrived.wait_for(lambda: self.most >= self.together, timeout=self.wait)
            self.active -= 1
            self.objects[key] = body
            self.puts[key] = self.puts.get(key, 0) + 1

    def exists(self, key: str) -> bool:
        return key in self.objects


def test_objects_are_uploaded_several_at_once_each_exactly_once(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    store = _GatedStore(together=3)
    archive = ArchiveExporter("x", store=store, spool_dir=tmp_path / "spool", uploads=3)
    auditor = make_auditor(exporters=[archive])
    for org in range(9):  # one object per organization
        _record(auditor, 2, org=f"org_{org}")
    assert auditor.force_flush(timeout=30)
    assert store.most == 3  # three uploads waited for each other: they ran at once
    data = {k: v for k, v in store.objects.items() if "/_integrity/" not in k}
    assert len(data) == 9
    assert set(store.puts.values()) == {1}  # no object was claimed by two uploaders
    assert sum(len(gzip.decompress(body).splitlines()) for body in data.values()) == 18
    assert archive.stats().uploaded_objects == 9
    assert archive.stats().pending_objects == 0


def test_one_uploader_stores_one_object_at_a_time(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    store = _GatedStore(together=2, wait=0.3)  # never reached: each upload waits it out
    archive = ArchiveExporter("x", store=store, spool_dir=tmp_path / "spool", uploads=1)
    auditor = make_auditor(exporters=[archive])
    for org in range(4):
        _record(auditor, 1, org=f"org_{org}")
    assert auditor.force_flush(timeout=30)
    assert store.most == 1
    assert len([k for k in store.objects if "/_integrity/" not in k]) == 4


def test_failed_uploads_are_retried_with_several_uploaders_and_counted(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    store = _GatedStore(together=1, fail_first=4)
    archive = ArchiveExporter("x", store=store, spool_dir=tmp_path / "spool", uploads=2)
    auditor = make_auditor(exporters=[archive])
    for org in range(3):
        _record(auditor, 2, org=f"org_{org}")
    assert auditor.force_flush(timeout=30)
    assert archive.stats().retries == 4
    assert set(store.puts.values()) == {1}
    assert archive.stats().uploaded_events == 6


def test_the_number_of_uploads_comes_from_the_environment_and_is_checked(tmp_path: Path) -> None:
    environ = {
        "AUDIT_LOG_EXPORTERS": "archive",
        "AUDIT_LOG_ARCHIVE_URL": str(tmp_path / "archive"),
        "AUDIT_LOG_ARCHIVE_UPLOADS": "7",
    }
    auditor = Auditor(environ=environ)
    try:
        (archive,) = (e for e in auditor.exporters if isinstance(e, ArchiveExporter))
        assert archive.uploads == 7
    finally:
        auditor.shutdown(timeout=5)
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_ARCHIVE_UPLOADS"):
        Auditor(environ={**environ, "AUDIT_LOG_ARCHIVE_UPLOADS": "0"})
    with pytest.raises(ValueError, match="uploads must be from 1 to 64"):
        ArchiveExporter(str(tmp_path / "a"), uploads=65)


def test_while_the_store_fails_one_uploader_at_a_time_tries_it(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Path
) -> None:
    """The uploaders share one backoff: once an upload failed, the next attempts go one at a
    time (here each takes 20 ms, so any overlap would show), not one per uploader."""
    import threading

    class FlakyStore:
        description = "flaky"

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.up = False
            self.active = self.most = self.calls = 0
            self.puts: dict[str, int] = {}

        def put(self, key: str, body: bytes) -> None:
            with self.lock:
                self.calls += 1
                self.active += 1
                self.most = max(self.most, self.active)
            try:
                time.sleep(0.02)
                if not self.up:
                    raise ConnectionError("the store is down")
                with self.lock:
                    self.puts[key] = self.puts.get(key, 0) + 1
            finally:
                with self.lock:
                    self.active -= 1

        def exists(self, key: str) -> bool:
            return key in self.puts

    store = FlakyStore()
    archive = ArchiveExporter("x", store=store, spool_dir=tmp_path / "spool", uploads=4)
    auditor = make_auditor(exporters=[archive])
    _record(auditor, 1, org="org_first")  # one object: its failed upload starts the backoff
    assert auditor.force_flush(timeout=0.5) is False
    wait_until(lambda: archive.stats().retries >= 1)
    for org in range(8):  # eight more objects, four uploaders, the store still down
        _record(auditor, 1, org=f"org_{org}")
    assert auditor.force_flush(timeout=1.5) is False
    wait_until(lambda: store.calls >= 3, timeout=30)  # attempts go on, with the backoff
    assert store.most == 1
    store.up = True
    assert auditor.force_flush(timeout=30)
    data = {key: n for key, n in store.puts.items() if "/_integrity/" not in key}
    assert len(data) == 9
    assert set(data.values()) == {1}
    assert archive.stats().retries == store.calls - len(store.puts)


def test_a_forked_child_never_waits_for_a_lock_a_parent_thread_held_at_the_fork(
    tmp_path: Path,
) -> None:
    """gunicorn --preload: the archive is made in the master, whose uploaders take its lock
    all the time; a worker forked at such a moment gets a fresh lock, not one never released."""
    import threading

    archive = ArchiveExporter(str(tmp_path / "archive"), spool_dir=tmp_path / "spool")
    auditor = Auditor(exporters=[archive], environ={}, batch_interval=0.01)
    _record(auditor, 2, org="org_a")
    assert auditor.force_flush(timeout=10)
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:  # as an uploader does, briefly
        with archive._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            _record(auditor, 3, org="org_b")
            code = 0 if auditor.force_flush(timeout=10) else 2
            auditor.shutdown(timeout=5)
        finally:
            os._exit(code)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    auditor.shutdown(timeout=10)
    objects = _local_objects(tmp_path / "archive")
    counts: dict[str, int] = {}
    for key, rows in objects.items():
        counts[key.split("/")[0]] = counts.get(key.split("/")[0], 0) + len(rows)
    assert counts == {"org_id=org_a": 2, "org_id=org_b": 3}


def test_a_forked_child_makes_its_own_s3_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's pooled keep-alive connections are sockets the parent shares after a fork:
    a child that sent requests on them would read the parent's responses."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    own = ArchiveExporter(f"s3://{BUCKET}/own")
    own_store = own.store
    assert isinstance(own_store, S3Store)
    parents_client = own_store.client  # made here, in the parent
    given = ArchiveExporter(f"s3://{BUCKET}/given", s3_client=parents_client)
    given_store = given.store
    assert isinstance(given_store, S3Store)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fresh = own_store.client
            code = 0 if fresh is not parents_client and given_store.client is parents_client else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert own_store.client is parents_client  # the parent keeps its own
