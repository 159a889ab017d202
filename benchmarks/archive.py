"""Throughput and memory of the S3 archive exporter, end to end, against a real S3 endpoint.

The endpoint is moto's S3 server (``ThreadedMotoServer``, as in ``tests/s3_server.py``) running
in a separate ``multiprocessing`` child on a free loopback port, so that it does not share the
benchmark's GIL. Events are realistic explicit records::

    auditor.record("doc.updated", org_id=f"org_{i % 20}", target=Target("doc", str(i)),
                   metadata={"field": ..., "revision": ...})

(20 organizations, so 20 partitions per day; ``--orgs N`` spreads them over N: the spool
appends and fsyncs once per partition in each batch, and each partition is an object of its
own), delivered by an ``Auditor`` with a queue large
enough that nothing is dropped and ``batch_size=2000``, to an ``ArchiveExporter`` with its
default object limits (10,000 events / 8 MiB / 60 s per object) and ``object_lock="auto"``.
Every run writes to a bucket of its own, created with boto3 as ``audit-log bucket create``
does (COMPLIANCE Object Lock for 90 days, versioning, encryption, lifecycle rules), so uploads
carry the retention headers and checksums they carry in production. Measured in one run:

1. **Sustained events/s**, from the first ``record()`` until ``auditor.force_flush()`` returned
   True and the exporter's ``stats().uploaded_events`` equals the number recorded, for
   gzip JSON Lines with the spool ON (a temporary directory on disk, fsynced per append) and OFF
   (memory), and with the spool ON under process delivery (``AUDIT_LOG_DELIVERY=process``: the
   chain, rendering and archive run in a forked process, whose CPU is read from ``/proc``; its
   flush returns once that process's archive has uploaded everything). The same for Parquet
   objects (``format="parquet"``, zstd; the ``parquet`` extra): spool ON with thread delivery
   and with 2 delivery processes, and spool OFF. Two diagnostic variants
   run in the same rounds: ``record() → pipeline`` with a
   no-op exporter (the capacity of the request path and delivery pipeline alone) and the
   archive's ``export()`` fed prebuilt events in batches of 2000 (the capacity of the archive
   alone: serialization, spool, gzip, upload). The CPU time of every thread (record loop,
   dispatcher, exporter lane, uploader) is read from its POSIX thread clock, to show where the
   time goes. Bytes per event and objects written come from listing the bucket.
2. **The per-event baseline**: one ``put_object`` per event (the same JSON line, gzipped alone,
   through the same ``S3Store.put``: SHA-256 checksum and Content-MD5) to the same endpoint,
   timed from ``record()`` on, for a smaller N. Reported with the ratio archive / baseline.
3. **Backlog memory**: with the spool on disk, the endpoint is DOWN (its process stopped) while
   1,000,000 events are recorded (200,000 with ``--quick``); the recording is paced so that at
   most about 20,000 events are in flight in memory (queue + exporter lane: what the default
   ``queue_size`` of 10,000 bounds each of), as steady traffic would be. Once the pipeline has
   handed every event to the exporter (its ``exported`` counter: ``export()`` returned
   SUCCESS, so the events are spooled and fsynced), the RSS growth is read from
   ``/proc/self/status`` (VmRSS before and after; the peak from a 20 Hz VmRSS sampler and from
   ``ru_maxrss``). Then the endpoint is started again on the same port and everything must
   upload. This phase runs first, on a fresh heap, so that the other phases cannot inflate it.

Every archive run is verified by listing the bucket and reading every object back (gzip JSON
Lines, or Parquet through ``decode_parquet``): every
record (by its target id) exactly once, every event id distinct, no other line. Variants run
interleaved round-robin (the order rotates every round) and are summarised by medians, because
the machine is shared and noisy. Timings are reported against targets (PASS / MISS) but never
fail the run; only lost or duplicated events exit non-zero.

When the record side (request path + delivery pipeline, not the archive) is the bottleneck or
the throughput target is missed, a short extra spool-on round runs under cProfile (one
profiler per thread, installed through ``threading.setprofile``; CPython 3.11 profiles per
thread) and the top functions of the two busiest threads and of the ``record()`` thread are
printed (wall time, idle waits on locks omitted).

``ArchiveExporter.stats()`` is read only while the exporter's lane is idle: called while
``export()`` opens a segment it can deadlock (see :func:`exported`).

Run::

    .venv/bin/python -m benchmarks.archive            # full run (~2-3 minutes)
    .venv/bin/python -m benchmarks.archive --quick    # smoke run (~20 seconds)
    .venv/bin/python -m benchmarks.archive --json results.json --profile

``--profile`` always prints the per-thread profiles, ``--no-profile`` never does.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import gzip
import io
import json
import logging
import multiprocessing
import os
import platform
import pstats
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Final

import orjson

from audit_middleware import AuditEvent, Auditor, ExportResult, Target
from audit_middleware._build import build_summary
from audit_middleware.testing import capture_audit_events
from benchmarks._proc import schedstat_ns
from exporters._object_store import S3Store
from exporters._parquet import decode_parquet
from exporters.archive import ArchiveExporter
from exporters.s3_bucket import create_bucket

__all__ = ["main"]

TARGET_EPS: Final = 100_000.0
TARGET_RATIO: Final = 100.0
TARGET_RSS_MB: Final = 100.0

RETENTION_DAYS: Final = 90
ORGS: Final = [20]  # orgs the events are spread over (one partition each per day): --orgs
BATCH_SIZE: Final = 2000
FIELDS: Final = ("title", "body", "tags", "owner")
FLUSH_TIMEOUT_S: Final = 600.0
MAX_IN_FLIGHT: Final = 20_000  # backlog phase: events recorded but not yet spooled
RECORD_CHUNK: Final = 5_000
MB: Final = 1024 * 1024

SPOOL_ON: Final = "spool-on"
SPOOL_ON_PROC: Final = "spool-on-proc"
SPOOL_ON_PROC2: Final = "spool-on-proc2"
SPOOL_OFF: Final = "spool-off"
PARQUET_ON: Final = "parquet-on"
PARQUET_ON_PROC2: Final = "parquet-on-proc2"
PARQUET_OFF: Final = "parquet-off"
NOOP: Final = "noop"
EXPORT_ONLY: Final = "export-only"
BASELINE: Final = "baseline"
VARIANTS: Final = (
    SPOOL_ON, SPOOL_ON_PROC, SPOOL_ON_PROC2, SPOOL_OFF,
    PARQUET_ON, PARQUET_ON_PROC2, PARQUET_OFF, NOOP, EXPORT_ONLY, BASELINE,
)  # fmt: skip
PIPELINES: Final = (
    SPOOL_ON, SPOOL_ON_PROC, SPOOL_ON_PROC2, SPOOL_OFF,
    PARQUET_ON, PARQUET_ON_PROC2, PARQUET_OFF, NOOP,
)  # fmt: skip
SPOOLED: Final = (SPOOL_ON, SPOOL_ON_PROC, SPOOL_ON_PROC2, PARQUET_ON, PARQUET_ON_PROC2)
#: Variants whose archive writes Parquet (zstd) objects; the others write gzip JSON Lines.
PARQUET: Final = (PARQUET_ON, PARQUET_ON_PROC2, PARQUET_OFF)
#: Delivery processes per variant (process delivery); absent: thread delivery.
PROCESSES: Final = {SPOOL_ON_PROC: 1, SPOOL_ON_PROC2: 2, PARQUET_ON_PROC2: 2}
LABELS: Final = {
    SPOOL_ON: "archive, spool ON (disk, fsync)",
    SPOOL_ON_PROC: "  the same, process delivery",
    SPOOL_ON_PROC2: "  the same, 2 delivery processes",
    SPOOL_OFF: "archive, spool OFF (memory)",
    PARQUET_ON: "Parquet archive, spool ON",
    PARQUET_ON_PROC2: "  the same, 2 delivery processes",
    PARQUET_OFF: "Parquet archive, spool OFF",
    NOOP: "record() → pipeline, no-op exporter",
    EXPORT_ONLY: "archive export() only, prebuilt",
    BASELINE: "baseline: 1 put_object per event",
}

#: Thread name → role, for the CPU split (the uploader belongs to the archive).
ROLES: Final = {
    "MainThread": "record",
    "audit-dispatcher": "build",
    "audit-export-ArchiveExporter": "export",
    "audit-export-NullExporter": "export",
    "audit-export-DeliveryProcess": "export",  # the link to the delivery process
    "audit-archive-upload": "upload",
    "delivery process": "child",  # every thread of it: seal, render, export, upload
}
ROLE_ORDER: Final = ("record", "build", "export", "upload", "child")
RECORD_SIDE: Final = ("record", "build")


# -- the S3 endpoint, in its own process ----------------------------------------------------------


def _serve_s3(port: int, conn: Connection, buckets: Sequence[str] = ()) -> None:
    """Child process: moto's S3 server on ``port`` until told to stop (or the parent is gone),
    with ``buckets`` made as ``S3Process.make_bucket`` makes them before it opens."""
    from tests.s3_server import S3Endpoint

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log
    if buckets:
        # Made through a private port first (moto's data is per process, not per server): a
        # client retrying on ``port`` could otherwise put an object between the bucket's
        # creation and its Object Lock configuration, which moto then refuses ("Bucket needs
        # to be empty"; S3 itself allows it).
        private = S3Endpoint()
        private.start()
        for bucket in buckets:
            create_bucket(private.client(), bucket, retention_days=RETENTION_DAYS, prefix="")
        private.stop()
    endpoint = S3Endpoint(port)
    endpoint.start()
    conn.send("ready")
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    endpoint.stop()
    conn.close()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Process:
    """moto's S3 server in a child process; stopping it stops the process (and loses its data)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, buckets: Sequence[str] = ()) -> None:
        """Spawn the server process on this endpoint's port: empty, but for ``buckets``,
        made as :meth:`make_bucket` makes them before the port opens."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_serve_s3, args=(self.port, child, tuple(buckets)), name="bench-s3", daemon=True
        )
        process.start()
        child.close()
        if not parent.poll(60) or parent.recv() != "ready":
            process.kill()
            raise RuntimeError("the S3 endpoint process did not start")
        self._process, self._conn = process, parent

    def make_bucket(self, bucket: str) -> None:
        """Create ``bucket`` as ``audit-log bucket create`` does (COMPLIANCE Object Lock,
        versioning, encryption, public access block, lifecycle rules for the whole bucket)."""
        create_bucket(self.client(), bucket, retention_days=RETENTION_DAYS, prefix="")

    def stop(self) -> None:
        """Stop the server and end its process."""
        if self._process is None or self._conn is None:
            return
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(15)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
        self._process = self._conn = None

    def client(self) -> Any:
        """A boto3 S3 client for this endpoint, configured like the archive's own."""
        import boto3
        from botocore.config import Config

        from tests.s3_server import CREDENTIALS

        config = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60)
        return boto3.client("s3", endpoint_url=self.url, config=config, **CREDENTIALS)


# -- events, exporters, verification --------------------------------------------------------------


def record_events(auditor: Auditor, start: int, n: int) -> None:
    """Record events ``start`` .. ``start + n - 1`` (the target id is the event's number)."""
    record = auditor.record
    for i in range(start, start + n):
        record(
            "doc.updated",
            org_id=f"org_{i % ORGS[0]}",
            target=Target("doc", str(i)),
            metadata={"field": FIELDS[i % 4], "revision": i % 97},
        )


class NullExporter:
    """Accepts every batch and only counts it: what the pipeline costs without an archive."""

    def __init__(self) -> None:
        self.events = 0

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Count the batch."""
        self.events += len(batch)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Nothing to release."""


def make_auditor(exporter: ArchiveExporter | NullExporter, n: int, processes: int = 0) -> Auditor:
    """An Auditor whose queue (and exporter lane) holds ``n`` events, so nothing is dropped;
    with ``processes``, process delivery by that many delivery processes."""
    return Auditor(
        exporters=[exporter],
        queue_size=n + BATCH_SIZE,
        batch_size=BATCH_SIZE,
        delivery="process" if processes else "thread",
        delivery_processes=max(1, processes),
        environ={},
    )


def make_archive(
    s3: S3Process, bucket: str, spool_dir: str | None, format: str = "jsonl"
) -> ArchiveExporter:
    """The exporter under test, writing to a new bucket of its own (object lock "auto")."""
    s3.make_bucket(bucket)
    return ArchiveExporter(
        f"s3://{bucket}", s3_client=s3.client(), spool_dir=spool_dir, format=format
    )


def wait_configured(exporter: ArchiveExporter) -> None:
    """Wait until the uploader thread has read the bucket's Object Lock mode (at its start)."""
    store = exporter.store
    if isinstance(store, S3Store):
        wait_until(lambda: store.lock_mode is not None, 10)


def prebuilt_events(n: int) -> list[AuditEvent]:
    """The events ``record_events`` would produce, built inline (no delivery)."""
    auditor = make_auditor(NullExporter(), 0)
    with capture_audit_events() as captured:
        record_events(auditor, 0, n)
    auditor.shutdown()
    return list(captured)


@dataclass
class Verified:
    """What listing one bucket found."""

    objects: int = 0
    bytes: int = 0
    lines: int = 0
    missing: int = 0
    duplicated: int = 0
    foreign: int = 0
    duplicate_ids: int = 0

    def problems(self, what: str, n: int) -> list[str]:
        """Lost or duplicated events, described."""
        if self.lines == n and not (
            self.missing or self.duplicated or self.foreign or self.duplicate_ids
        ):
            return []
        return [
            f"{what}: {n} recorded, {self.lines} lines in {self.objects} objects: "
            f"{self.missing} missing, {self.duplicated} duplicated, {self.foreign} unexpected, "
            f"{self.duplicate_ids} repeated event ids"
        ]


def verify(client: Any, bucket: str, n: int) -> Verified:
    """Download every object of ``bucket``; check records 0..n-1 appear exactly once."""
    seen = bytearray(n)
    ids: set[str] = set()
    v = Verified()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            if obj["Key"].startswith("_integrity/") or "/_integrity/" in obj["Key"]:
                continue  # digests and public keys: checked by `audit-log verify`
            v.objects += 1
            v.bytes += int(obj["Size"])
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            for event in read_object(obj["Key"], body):
                v.lines += 1
                ids.add(event["id"])
                i = int(event["target"]["id"])
                if 0 <= i < n:
                    seen[i] = min(255, seen[i] + 1)
                else:
                    v.foreign += 1
    v.missing = seen.count(0)
    v.duplicated = n - v.missing - seen.count(1)
    v.duplicate_ids = v.lines - len(ids)
    return v


def read_object(key: str, body: bytes) -> Iterator[dict[str, Any]]:
    """The events of one archive object: Parquet by its suffix, else gzip JSON Lines."""
    if key.endswith(".parquet"):
        yield from decode_parquet(body)
        return
    for line in gzip.decompress(body).splitlines():
        yield orjson.loads(line)


# -- measurement helpers --------------------------------------------------------------------------


def thread_cpu(threads: Sequence[threading.Thread]) -> dict[str, float]:
    """CPU seconds of the live threads so far, summed by name (POSIX per-thread clocks)."""
    out: dict[str, float] = {}
    for t in threads:
        if t.ident is None or not t.is_alive():
            continue
        with contextlib.suppress(OSError):
            cpu = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            out[t.name] = out.get(t.name, 0.0) + cpu  # the archive's uploaders share a name
    return out


def new_threads(before: set[int | None]) -> list[threading.Thread]:
    """Threads started since ``before`` (a set of idents) was taken."""
    return [t for t in threading.enumerate() if t.ident not in before]


def exported(auditor: Auditor) -> int:
    """Events the exporter accepted (for the archive: spooled), from the pipeline's counters.

    Never ``ArchiveExporter.stats()`` while its lane may be exporting: ``stats()`` takes the
    exporter's lock and then the spool's, while ``export()`` opening a segment takes the spool's
    lock and then the exporter's (``_next_key``), and the two threads can deadlock.
    """
    return sum(e.exported for e in auditor.stats().exporters)


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.001) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def vmrss() -> int:
    """Current resident set size in bytes (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def maxrss() -> int:
    """Peak resident set size of the process so far, in bytes (``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples VmRSS at 20 Hz in a thread; ``peak`` is the highest value seen."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = vmrss()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, vmrss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, vmrss())


def filesystem_of(path: str) -> str:
    """The type of the filesystem holding ``path`` (tmpfs would make fsync free)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


# -- 1 and 2: sustained throughput and the per-event baseline -------------------------------------


@dataclass
class Run:
    """One timed run of one variant."""

    variant: str
    events: int
    seconds: float
    record_seconds: float
    behind_after_record: int  # events recorded but not yet exported when the loop ended
    cpu: dict[str, float]  # CPU seconds per role
    process_cpu: float
    objects: int = 0
    bytes: int = 0
    flushed: bool = True

    @property
    def eps(self) -> float:
        """Events per second, first record() to acknowledged."""
        return self.events / self.seconds

    def us_per_event(self, role: str) -> float:
        """CPU µs per event spent by one role."""
        return self.cpu.get(role, 0.0) / self.events * 1e6


def _roles(cpu: dict[str, float], main: float, main_role: str = "record") -> dict[str, float]:
    out = dict.fromkeys(ROLE_ORDER, 0.0)
    out[main_role] += main
    for name, seconds in cpu.items():
        role = ROLES.get(name)
        if role is not None and name != "MainThread":
            out[role] += seconds
    return out


def run_pipeline(s3: S3Process | None, variant: str, n: int, bucket: str) -> tuple[Run, list[str]]:
    """record() n events through an Auditor into the archive (or a no-op exporter)."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-spool-") as tmp:
        before = {t.ident for t in threading.enumerate()}
        exporter: ArchiveExporter | NullExporter
        if variant == NOOP:
            exporter = NullExporter()
        else:
            assert s3 is not None
            spool = variant in SPOOLED
            fmt = "parquet" if variant in PARQUET else "jsonl"
            exporter = make_archive(s3, bucket, tmp if spool else None, fmt)
            if spool:  # its uploader starts now (without a spool: on first export)
                wait_configured(exporter)
        processes = PROCESSES.get(variant, 0)
        process = processes > 0
        auditor = make_auditor(exporter, n, processes)
        gc.collect()
        cpu0, main0 = time.process_time(), time.thread_time()
        start = time.perf_counter()
        record_events(auditor, 0, n)
        recorded = time.perf_counter()
        behind = n - exported(auditor)
        flushed = auditor.force_flush(timeout=FLUSH_TIMEOUT_S)
        # With process delivery the flush returns once the archive there has uploaded it all.
        if flushed and isinstance(exporter, ArchiveExporter) and not process:
            archive = exporter  # its lane is idle now
            wait_until(lambda: archive.stats().uploaded_events >= n, 30)
        end = time.perf_counter()
        main = time.thread_time() - main0
        cpu = thread_cpu(new_threads(before))
        child = auditor.delivery_process
        pids = child.pids if child is not None else ()
        child_cpu = sum(schedstat_ns(pid) for pid in pids) / 1e9
        cpu["delivery process"] = child_cpu
        process_cpu = time.process_time() - cpu0 + child_cpu
        stats = auditor.stats()
        auditor.shutdown(timeout=30)
    run = Run(variant, n, end - start, recorded - start, behind, _roles(cpu, main), process_cpu)
    run.flushed = flushed
    problems = []
    if stats.dropped:
        problems.append(f"{variant}: the pipeline dropped {stats.dropped} events")
    if isinstance(exporter, NullExporter) and exporter.events != n:
        problems.append(f"{variant}: {n} recorded, {exporter.events} exported")
    return run, problems


def run_export_only(
    s3: S3Process, events: Sequence[AuditEvent], bucket: str
) -> tuple[Run, list[str]]:
    """The archive alone: prebuilt events straight into export() in batches, then flushed."""
    n = len(events)
    with tempfile.TemporaryDirectory(prefix="audit-bench-spool-") as tmp:
        before = {t.ident for t in threading.enumerate()}
        exporter = make_archive(s3, bucket, tmp)
        wait_configured(exporter)
        gc.collect()
        cpu0, main0 = time.process_time(), time.thread_time()
        start = time.perf_counter()
        results = [exporter.export(events[i : i + BATCH_SIZE]) for i in range(0, n, BATCH_SIZE)]
        exported = time.perf_counter()
        flushed = exporter.force_flush(timeout=FLUSH_TIMEOUT_S)
        wait_until(lambda: exporter.stats().uploaded_events >= n, 30)
        end = time.perf_counter()
        main = time.thread_time() - main0
        cpu = thread_cpu(new_threads(before))
        process_cpu = time.process_time() - cpu0
        exporter.shutdown(timeout=30)
    roles = _roles(cpu, main, "export")
    run = Run(EXPORT_ONLY, n, end - start, exported - start, 0, roles, process_cpu)
    run.flushed = flushed
    failed = sum(r is not ExportResult.SUCCESS for r in results)
    return run, [f"{EXPORT_ONLY}: {failed} export() calls failed"] if failed else []


def run_baseline(s3: S3Process, n: int, bucket: str) -> Run:
    """One gzip object per event through ``S3Store.put``, timed from ``record()`` on."""
    s3.make_bucket(bucket)
    store = S3Store(bucket, client=s3.client())
    store.lock_mode = store.object_lock_mode()  # as the archive's object_lock="auto" does
    auditor = make_auditor(NullExporter(), 0)
    gc.collect()
    cpu0, main0 = time.process_time(), time.thread_time()
    start = time.perf_counter()
    with capture_audit_events() as captured:
        for i in range(n):
            record_events(auditor, i, 1)
            event = captured[-1]
            body = gzip.compress(orjson.dumps(event.to_dict()) + b"\n", compresslevel=6, mtime=0)
            day = event.occurred_at[:10]
            store.put(f"org_id={event.org_id}/dt={day}/{event.id}.jsonl.gz", body)
    end = time.perf_counter()
    main = time.thread_time() - main0
    process_cpu = time.process_time() - cpu0
    auditor.shutdown()
    return Run(BASELINE, n, end - start, end - start, 0, _roles({}, main), process_cpu)


@dataclass
class Sustained:
    """Results of measurements 1 and 2."""

    rounds: int
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        """Median events/s of one variant."""
        return statistics.median(r.eps for r in self.runs[variant])

    def median_of(self, variant: str, value: Callable[[Run], float]) -> float:
        """Median of any per-run value of one variant."""
        return statistics.median(value(r) for r in self.runs[variant])

    def median_us(self, variant: str, role: str) -> float:
        """Median CPU µs per event of one role in one variant."""
        return statistics.median(r.us_per_event(role) for r in self.runs[variant])


def rotations(names: Sequence[str], rounds: int) -> Iterator[list[str]]:
    """Each round's order: the variants rotated by one more place each round."""
    for r in range(rounds):
        k = r % len(names)
        yield [*names[k:], *names[:k]]


def one_run(
    s3: S3Process, variant: str, n: int, n_base: int, bucket: str, events: list[AuditEvent]
) -> tuple[Run, list[str]]:
    """Run and verify one variant once."""
    client = s3.client()
    if variant == BASELINE:
        run = run_baseline(s3, n_base, bucket)
        problems: list[str] = []
    elif variant == EXPORT_ONLY:
        run, problems = run_export_only(s3, events, bucket)
    else:
        run, problems = run_pipeline(None if variant == NOOP else s3, variant, n, bucket)
    if variant != NOOP:
        v = verify(client, bucket, run.events)
        run.objects, run.bytes = v.objects, v.bytes
        problems += v.problems(f"{variant} (bucket {bucket})", run.events)
    return run, problems


def measure_sustained(
    s3: S3Process, rounds: int, n: int, n_base: int, warmup: int
) -> tuple[Sustained, list[str]]:
    """Measurements 1 and 2, interleaved: every variant once per round, in rotating order."""
    events = prebuilt_events(n)
    problems: list[str] = []
    for variant in VARIANTS:  # warm-up: imports, boto3 clients, connections, caches
        warm = events[:warmup] if variant == EXPORT_ONLY else []
        _, more = one_run(s3, variant, warmup, min(50, n_base), f"bench-warmup-{variant}", warm)
        problems += more
    result = Sustained(rounds, {v: [] for v in VARIANTS})
    for r, order in enumerate(rotations(VARIANTS, rounds)):
        for variant in order:
            run, more = one_run(s3, variant, n, n_base, f"bench-{variant}-r{r}", events)
            result.runs[variant].append(run)
            problems += more
            print(f"  round {r + 1}/{rounds} {variant:<12} {run.eps:>12,.0f} events/s", flush=True)
    return result, problems


# -- 3: backlog with the endpoint down ------------------------------------------------------------


@dataclass
class Backlog:
    """Results of measurement 3."""

    events: int
    spool_fs: str
    record_seconds: float
    spooled_seconds: float
    rss_before: int
    rss_after: int
    rss_sampled_peak: int
    maxrss_before: int
    maxrss_after: int
    max_in_flight: int
    spool_bytes: int
    pending_objects: int
    failed_uploads: int
    drain_seconds: float
    objects: int
    bytes: int
    flushed: bool

    @property
    def growth_mb(self) -> float:
        """VmRSS growth from before recording to everything spooled, in MiB."""
        return (self.rss_after - self.rss_before) / MB

    @property
    def peak_growth_mb(self) -> float:
        """Sampled peak VmRSS during the outage minus VmRSS before, in MiB."""
        return (self.rss_sampled_peak - self.rss_before) / MB


class UnsignedDigestsFilter(logging.Filter):
    """Drops the archive's "digests are unsigned" warning, which every run's delivery
    processes would print again (the benchmark says so once, in its header)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that one warning."""
        return not str(record.msg).startswith("audit archive digests are unsigned")


@contextlib.contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """The expected 'upload failed, retrying' warnings of an outage, held back."""
    log = logging.getLogger("audit_middleware")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def measure_backlog(s3: S3Process, n: int) -> tuple[Backlog, list[str]]:
    """Record n events with the endpoint down, measure RSS, restart it, check every upload."""
    bucket = "bench-backlog"
    with tempfile.TemporaryDirectory(prefix="audit-bench-spool-") as tmp, quiet_library_warnings():
        exporter = make_archive(s3, bucket, tmp)
        auditor = make_auditor(exporter, n)
        wait_configured(exporter)
        s3.stop()
        gc.collect()
        rss_before, maxrss_before = vmrss(), maxrss()
        max_in_flight = 0
        with RssSampler() as sampler:
            start = time.perf_counter()
            for first in range(0, n, RECORD_CHUNK):
                record_events(auditor, first, min(RECORD_CHUNK, n - first))
                recorded = min(n, first + RECORD_CHUNK)
                in_flight = recorded - exported(auditor)
                max_in_flight = max(max_in_flight, in_flight)
                while in_flight > MAX_IN_FLIGHT:
                    time.sleep(0.002)
                    in_flight = recorded - exported(auditor)
            record_seconds = time.perf_counter() - start
            spooled = wait_until(lambda: exported(auditor) >= n, 300, 0.005)
            spooled_seconds = time.perf_counter() - start
            rss_after = vmrss()
        maxrss_after = maxrss()
        down = exporter.stats()
        s3.start([bucket])  # a new process on the same port: empty, but for the bucket
        drain_start = time.perf_counter()
        flushed = auditor.force_flush(timeout=FLUSH_TIMEOUT_S)
        wait_until(lambda: exporter.stats().uploaded_events >= n, 30)
        drain_seconds = time.perf_counter() - drain_start
        stats = auditor.stats()
        auditor.shutdown(timeout=30)
        fs = filesystem_of(os.path.realpath(tmp))
    v = verify(s3.client(), bucket, n)
    problems = v.problems("backlog", n)
    if stats.dropped:
        problems.append(f"backlog: the pipeline dropped {stats.dropped} events")
    if not spooled:
        problems.append(f"backlog: only {down.spooled_events} of {n} events reached the spool")
    result = Backlog(
        events=n,
        spool_fs=fs,
        record_seconds=record_seconds,
        spooled_seconds=spooled_seconds,
        rss_before=rss_before,
        rss_after=rss_after,
        rss_sampled_peak=sampler.peak,
        maxrss_before=maxrss_before,
        maxrss_after=maxrss_after,
        max_in_flight=max_in_flight,
        spool_bytes=down.spool_bytes,
        pending_objects=down.pending_objects,
        failed_uploads=down.retries,
        drain_seconds=drain_seconds,
        objects=v.objects,
        bytes=v.bytes,
        flushed=flushed,
    )
    return result, problems


# -- profile of the busiest threads ---------------------------------------------------------------


class ThreadProfiles:
    """One cProfile per named thread started while installed (CPython 3.11 profiles per thread).

    ``threading.setprofile`` makes every new thread call :meth:`_hook` first; the hook replaces
    itself with a fresh ``cProfile.Profile`` in the threads of interest.
    """

    def __init__(self) -> None:
        self.profiles: dict[str, cProfile.Profile] = {}

    def _hook(self, frame: FrameType, event: str, arg: object) -> None:
        sys.setprofile(None)
        name = threading.current_thread().name
        if name in ROLES and name not in self.profiles:
            profiler = cProfile.Profile()
            self.profiles[name] = profiler
            profiler.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        threading.setprofile(None)


def profile_round(s3: S3Process, n: int) -> tuple[dict[str, cProfile.Profile], dict[str, float]]:
    """A spool-on round with a profiler in every thread; returns them and their CPU seconds."""
    bucket = "bench-profile"
    with tempfile.TemporaryDirectory(prefix="audit-bench-spool-") as tmp, ThreadProfiles() as tp:
        before = {t.ident for t in threading.enumerate()}
        exporter = make_archive(s3, bucket, tmp)
        auditor = make_auditor(exporter, n)
        main = cProfile.Profile()
        main0 = time.thread_time()
        main.enable()
        record_events(auditor, 0, n)
        main.disable()
        main_cpu = time.thread_time() - main0
        auditor.force_flush(timeout=FLUSH_TIMEOUT_S)
        wait_until(lambda: exporter.stats().uploaded_events >= n, 30)
        cpu = thread_cpu(new_threads(before))
        auditor.shutdown(timeout=30)  # the profiled threads end here
    cpu["MainThread"] = main_cpu
    return {"MainThread": main, **tp.profiles}, cpu


_IDLE: Final = ("'acquire' of '_thread.lock'", "threading.py", "{built-in method time.sleep}")


def format_profile(title: str, profiler: cProfile.Profile, top: int) -> str:
    """The top functions of one profile by own time, without idle waits (locks, events)."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top + 6)
    lines = [title]
    rows = 0
    for line in out.getvalue().splitlines():
        text = line.strip()
        if not text or text.startswith(("Ordered", "List")) or any(i in text for i in _IDLE):
            continue
        if text[0].isdigit() and "function calls" not in text:
            rows += 1
            if rows > top:
                break
        lines.append(line)
    return "\n".join(lines)


# -- reporting ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    """PASS or MISS (a missed timing target never fails the run)."""
    return "PASS" if ok else "MISS"


def print_sustained(s: Sustained) -> None:
    """Tables of measurements 1 and 2."""
    n = s.runs[SPOOL_ON][0].events
    n_base = s.runs[BASELINE][0].events
    print(
        "1+2. sustained throughput: first record() → every object acknowledged by S3\n"
        f"  (median of {s.rounds} rounds; {n:,} events per run, baseline {n_base:,} per round)"
    )
    print(
        f"{'variant':<37}{'events/s':>10}{'spread':>19}{'record() loop/s':>16}"
        f"{'objects':>9}{'B/event':>9}"
    )
    for variant in VARIANTS:
        runs = s.runs[variant]
        spread = f"{min(r.eps for r in runs):,.0f}-{max(r.eps for r in runs):,.0f}"
        loop = "-"
        if variant in PIPELINES:
            loop = f"{s.median_of(variant, lambda r: r.events / r.record_seconds):,.0f}"
        objects = "-" if variant == NOOP else f"{s.median_of(variant, lambda r: r.objects):,.0f}"
        per_event = "-"
        if variant != NOOP:
            per_event = f"{s.median_of(variant, lambda r: r.bytes / r.events):.1f}"
        print(
            f"{LABELS[variant]:<37}{s.median(variant):>10,.0f}{spread:>19}{loop:>16}"
            f"{objects:>9}{per_event:>9}"
        )
    print()
    print("CPU per event by thread (median µs; cores = process CPU / wall time)")
    print(
        f"{'variant':<37}{'record()':>9}{'build':>8}{'export':>8}{'upload':>8}"
        f"{'child':>8}{'process':>9}{'cores':>7}{'behind':>9}"
    )
    for variant in VARIANTS:
        cells = [f"{s.median_us(variant, role):.1f}" for role in ROLE_ORDER]
        total = s.median_of(variant, lambda r: r.process_cpu / r.events * 1e6)
        cores = s.median_of(variant, lambda r: r.process_cpu / r.seconds)
        behind = "-"
        if variant in PIPELINES:
            behind = f"{s.median_of(variant, lambda r: r.behind_after_record / r.events):.0%}"
        print(
            f"{LABELS[variant]:<37}{cells[0]:>9}{cells[1]:>8}{cells[2]:>8}{cells[3]:>8}"
            f"{cells[4]:>8}"
            f"{total:>9.1f}{cores:>7.2f}{behind:>9}"
        )
    print(
        "  record() = the recording thread; build = dispatcher (event build); export = exporter "
        "lane\n  (JSON, spool append + fsync, seal + gzip); upload = archive uploader (S3 PUT); "
        "behind =\n  share of the events not yet exported when the record() loop ended; child = "
        "the delivery\n  process (process delivery: seal, render, export, upload; export is "
        "then the link to it)"
    )
    unflushed = sum(not r.flushed for runs in s.runs.values() for r in runs)
    if unflushed:
        print(f"  note: force_flush() returned False in {unflushed} runs")
    print()
    on, base = s.median(SPOOL_ON), s.median(BASELINE)
    for variant, how in (
        (SPOOL_ON, "thread delivery"),
        (SPOOL_ON_PROC, "1 delivery process"),
        (SPOOL_ON_PROC2, "2 delivery processes"),
        (PARQUET_ON, "Parquet, thread delivery"),
        (PARQUET_ON_PROC2, "Parquet, 2 delivery processes"),
    ):
        eps = s.median(variant)
        print(
            f"spool ON sustained, {how}: {eps:,.0f} events/s (target ≥ {TARGET_EPS:,.0f}): "
            f"{verdict(eps >= TARGET_EPS)}"
        )
    print(
        f"archive (spool ON) / per-event baseline: {on / base:,.0f}x "
        f"(target ≥ {TARGET_RATIO:g}x): {verdict(on / base >= TARGET_RATIO)}"
    )
    off = s.median(SPOOL_OFF)
    print(f"archive (spool OFF) / per-event baseline: {off / base:,.0f}x")
    parquet = s.median(PARQUET_ON)
    print(f"Parquet archive (spool ON) / per-event baseline: {parquet / base:,.0f}x")


def print_backlog(b: Backlog) -> None:
    """Lines of measurement 3."""
    print(
        f"3. backlog with the endpoint DOWN: {b.events:,} events, spool on disk "
        f"({b.spool_fs}), ≤ {MAX_IN_FLIGHT:,} in flight in memory"
    )
    print(
        f"  recorded in {b.record_seconds:.1f} s, all spooled after {b.spooled_seconds:.1f} s "
        f"({b.events / b.spooled_seconds:,.0f} events/s); max in flight {b.max_in_flight:,}"
    )
    print(
        f"  while down: {b.spool_bytes / MB:.1f} MiB spooled in {b.pending_objects} sealed "
        f"objects (+ open segments), {b.failed_uploads} failed upload attempts"
    )
    print(
        f"  VmRSS {b.rss_before / MB:.1f} → {b.rss_after / MB:.1f} MiB: growth "
        f"{b.growth_mb:+.1f} MiB (target < {TARGET_RSS_MB:g} MiB): "
        f"{verdict(b.growth_mb < TARGET_RSS_MB)}"
    )
    print(
        f"  peak: sampled VmRSS {b.rss_sampled_peak / MB:.1f} MiB ({b.peak_growth_mb:+.1f}); "
        f"ru_maxrss {b.maxrss_before / MB:.1f} → {b.maxrss_after / MB:.1f} MiB "
        f"({(b.maxrss_after - b.maxrss_before) / MB:+.1f})"
    )
    print(
        f"  endpoint back: everything uploaded in {b.drain_seconds:.1f} s "
        f"({b.events / b.drain_seconds:,.0f} events/s), {b.objects} objects, "
        f"{b.bytes / b.events:.1f} B/event" + ("" if b.flushed else "; force_flush() was False")
    )


def diagnose(s: Sustained) -> tuple[bool, str]:
    """Whether the record side (request path + pipeline) rather than the archive is the limit."""
    us = {role: s.median_us(SPOOL_ON, role) for role in ROLE_ORDER}
    record_side = us["record"] + us["build"]
    archive_side = us["export"] + us["upload"]
    total = s.median_of(SPOOL_ON, lambda r: r.process_cpu / r.events * 1e6)
    cores = s.median_of(SPOOL_ON, lambda r: r.process_cpu / r.seconds)
    noop, alone = s.median(NOOP), s.median(EXPORT_ONLY)
    bound = record_side >= archive_side or noop <= alone
    side = "the record side (record() + delivery pipeline), not the archive"
    lines = [
        f"bottleneck: {side if bound else 'the archive'}.",
        f"CPU per event, spool on: record() {us['record']:.1f} µs + build (dispatcher) "
        f"{us['build']:.1f} µs = {record_side:.1f} µs on the record side,",
        f"export (lane) {us['export']:.1f} µs + upload {us['upload']:.1f} µs = "
        f"{archive_side:.1f} µs in the archive: {total:.1f} µs of process CPU per event",
        f"at {cores:.2f} cores (the Python threads share one GIL).",
        f"Alone: record() → pipeline (no-op exporter) {noop:,.0f} events/s; "
        f"archive export() {alone:,.0f} events/s.",
        f"{TARGET_EPS:,.0f} events/s needs ≤ {1e6 / TARGET_EPS:.0f} µs of CPU per event "
        f"in all; the event build alone takes {us['build']:.1f} µs.",
    ]
    if noop < TARGET_EPS and alone < TARGET_EPS:
        lines.append("Neither side reaches the target on its own: both need work to get there.")
    two = s.median(SPOOL_ON_PROC2)
    two_total = s.median_of(SPOOL_ON_PROC2, lambda r: r.process_cpu / r.events * 1e6)
    two_cores = s.median_of(SPOOL_ON_PROC2, lambda r: r.process_cpu / r.seconds)
    lines.append(
        f"With 2 delivery processes: {two:,.0f} events/s at {two_total:.1f} µs of CPU per event "
        f"in all processes, {two_cores:.2f} cores of {os.cpu_count()} (moto's server not "
        f"counted); {TARGET_EPS:,.0f} events/s needs {two_total * TARGET_EPS / 1e6:.2f} cores "
        "at that cost."
    )
    text = "\n  ".join(lines)
    return bound, text


def machine() -> dict[str, Any]:
    """The context the numbers were taken in."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# -- main -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    rounds: int
    events: int
    baseline: int  # per round
    backlog: int
    warmup: int
    profile: int


FULL: Final = Plan(
    rounds=5, events=200_000, baseline=400, backlog=1_000_000, warmup=10_000, profile=100_000
)
QUICK: Final = Plan(
    rounds=1, events=40_000, baseline=200, backlog=200_000, warmup=2_000, profile=20_000
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 only if events were lost or duplicated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~20 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--orgs",
        type=int,
        default=ORGS[0],
        help=f"orgs the events are spread over, one partition each (default {ORGS[0]})",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", action="store_true", help="always profile the threads")
    group.add_argument("--no-profile", action="store_true", help="never profile the threads")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.orgs < 1:
        parser.error("--orgs must be at least 1")
    ORGS[0] = args.orgs

    ctx = machine()
    print(
        f"Python {ctx['python']} ({ctx['implementation']}) on {ctx['platform']}, "
        f"{ctx['cpu_count']} CPUs, load average {ctx['load_average']}"
    )
    tmp = os.path.realpath(tempfile.gettempdir())
    print(
        f"mode: {'quick' if args.quick else 'full'}, {ORGS[0]:,} orgs; "
        "S3: moto server in a child process; "
        f"spool in {tmp} ({filesystem_of(tmp)})\nbuild: {build_summary()}\n"
        "digests: unsigned, as without AUDIT_LOG_SIGNING_KEY_FILE (its warning is not repeated "
        "for every run)"
    )
    logging.getLogger("audit_middleware").addFilter(UnsignedDigestsFilter())
    started = time.monotonic()
    s3 = S3Process()
    s3.start()
    problems: list[str] = []
    try:
        print(f"3. backlog: {plan.backlog:,} events with the endpoint down ...", flush=True)
        backlog, more = measure_backlog(s3, plan.backlog)
        problems += more
        print("1+2. sustained throughput and the per-event baseline ...", flush=True)
        sustained, more = measure_sustained(
            s3, plan.rounds, plan.events, plan.baseline, plan.warmup
        )
        problems += more
        record_bound, diagnosis = diagnose(sustained)
        profiles: dict[str, cProfile.Profile] = {}
        profile_cpu: dict[str, float] = {}
        want_profile = args.profile or (
            not args.no_profile and (record_bound or sustained.median(SPOOL_ON) < TARGET_EPS)
        )
        if want_profile and sys.version_info < (3, 12):
            print("profiling one spool-on round ...", flush=True)
            profiles, profile_cpu = profile_round(s3, plan.profile)
    finally:
        s3.stop()

    print()
    print_sustained(sustained)
    print()
    print_backlog(backlog)
    print()
    print(diagnosis)
    if want_profile and not profiles:
        print("  (per-thread cProfile needs CPython < 3.12, where profilers are per thread)")
    if profiles:
        on = sustained.runs[SPOOL_ON]
        busiest = sorted(
            (name for name in profiles if name in ROLES),
            key=lambda name: -statistics.median(r.us_per_event(ROLES[name]) for r in on),
        )
        print()
        print(
            f"cProfile of one spool-on round ({plan.profile:,} events; wall time per thread, "
            "idle waits omitted;\n  thread CPU under the profiler: "
            + ", ".join(f"{ROLES[k]} {v:.2f} s" for k, v in profile_cpu.items() if k in ROLES)
            + ")"
        )
        shown = busiest[:2]
        if "MainThread" not in shown:
            shown.append("MainThread")  # the request path, whatever its rank
        for rank, name in enumerate(shown):
            which = ("busiest", "next busiest")[rank] if rank < 2 else "request path"
            title = f"[{rank + 1}] {which} thread: {name} ({ROLES[name]}), top by own time:"
            print(format_profile(title, profiles[name], (14, 8, 6)[min(rank, 2)]))
            print()
    print(f"total time: {time.monotonic() - started:.0f} s")

    if args.json:
        result = {
            "machine": ctx,
            "mode": "quick" if args.quick else "full",
            "orgs": ORGS[0],
            "plan": asdict(plan),
            "targets": {"eps": TARGET_EPS, "ratio": TARGET_RATIO, "rss_mb": TARGET_RSS_MB},
            "sustained": {
                v: {
                    "median_eps": sustained.median(v),
                    "runs": [{**asdict(r), "eps": r.eps} for r in sustained.runs[v]],
                }
                for v in VARIANTS
            },
            "ratio": sustained.median(SPOOL_ON) / sustained.median(BASELINE),
            "backlog": {**asdict(backlog), "growth_mb": backlog.growth_mb},
            "record_side_bound": record_bound,
            "problems": problems,
        }
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")

    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
