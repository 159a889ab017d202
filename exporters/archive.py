"""Archive exporter: gzip JSON Lines (or zstd Parquet) objects, Hive-partitioned, in S3 or a
local directory.

Layout: ``<prefix>/org_id=<org>/dt=<YYYY-MM-DD>/<writer>-<seq>.jsonl.gz`` (or ``.parquet``),
with ``_global`` as the org of events without one. ``<writer>`` is ``<host>-<pid>-<random>``,
unique per process start, and ``<seq>`` counts up, so no upload can overwrite another's,
whatever the number of workers and hosts writing at once.

``export`` appends each batch to per-partition segments in the spool (fsynced to disk when a
spool directory is configured) and returns; a segment is sealed into an object once it holds
``max_events`` events, ``max_bytes`` bytes or is ``max_age`` seconds old, and an uploader thread
stores sealed objects with jittered exponential backoff for as long as the store is down. The
spool is bounded (``spool_max_bytes``): past the cap ``export`` reports FAILURE, so the delivery
pipeline retries and finally counts the loss. ``force_flush`` seals everything and returns True
only once the store acknowledged every object. At start-up the spools of dead processes are
adopted and uploaded under their original keys.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from audit_middleware._batch import batch_lines
from audit_middleware._event import AuditEvent
from audit_middleware._export import ExportResult
from audit_middleware._partition import group_by_partition
from audit_middleware._warn import logger, warn_limited
from audit_middleware.integrity._chain import ChainHead
from audit_middleware.integrity._keys import SigningKey
from exporters._archive_digests import DigestKeeper
from exporters._gzip import gzip_encoder, resolve_engine
from exporters._object_store import ObjectStore, S3Store, open_store
from exporters._spool import ChainSpan, Sealed, Spool, SpoolClosed, SpoolFull

__all__ = ["GLOBAL_ORG", "ArchiveExporter", "ArchiveStats"]

#: The partition value of events without an organization.
GLOBAL_ORG = "_global"
#: Objects uploaded at once by default (``uploads``), and at most.
DEFAULT_UPLOADS = 4
MAX_UPLOADS = 64
_BACKOFF_CAP_S = 30.0
_HURRIED_RETRY_S = 0.5  # while a flush waits, a failing store is tried this often


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    """Counters of an archive exporter, in events and objects."""

    spooled_events: int
    uploaded_objects: int
    uploaded_events: int
    pending_objects: int
    spool_bytes: int
    retries: int
    refused_events: int
    adopted_files: int


class ArchiveExporter:
    """Write audit events to ``url`` (``s3://bucket/prefix`` or a directory)."""

    #: Batches from the pipeline come with each event's JSON line rendered, and batches that
    #: queued up behind a slow write are merged into one (one journal write and fsync).
    writes_lines = True
    merges_batches = True

    def __init__(
        self,
        url: str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 1 << 30,
        max_events: int = 10_000,
        max_bytes: int = 8 << 20,
        max_age: float = 60.0,
        retention_days: int = 90,
        object_lock: str | None = "auto",
        format: str = "jsonl",
        gzip_level: int = 3,
        gzip_engine: str = "auto",
        store: ObjectStore | None = None,
        s3_client: Any = None,
        signing_key: SigningKey | None = None,
        digest_interval: float = 3600.0,
        uploads: int = DEFAULT_UPLOADS,
    ) -> None:
        if min(max_events, max_bytes, max_age, spool_max_bytes, digest_interval) <= 0:
            raise ValueError(
                "max_events, max_bytes, max_age, spool_max_bytes and digest_interval "
                "must be positive"
            )
        if not 1 <= uploads <= MAX_UPLOADS:
            raise ValueError(f"uploads must be from 1 to {MAX_UPLOADS}, got {uploads}")
        #: Objects uploaded at once, each by its own uploader thread.
        self.uploads = uploads
        if format not in ("jsonl", "parquet"):
            raise ValueError(f"archive format must be 'jsonl' or 'parquet', got {format!r}")
        if format == "parquet":
            from exporters._parquet import arrow_schema

            arrow_schema()
        self.format = format
        self.gzip_level = gzip_level
        #: "isal" or "zlib": what ``gzip_engine`` ("auto" by default) resolved to.
        self.gzip_engine = resolve_engine(gzip_engine)
        self._gzip = gzip_encoder(self.gzip_engine, gzip_level)  # checks the level
        self._suffix = ".parquet" if format == "parquet" else ".jsonl.gz"
        if object_lock not in (None, "auto", "COMPLIANCE", "GOVERNANCE"):
            raise ValueError("object_lock must be 'auto', 'COMPLIANCE', 'GOVERNANCE' or None")
        if store is None:
            store, prefix = open_store(
                url, client=s3_client, retention_days=retention_days, connections=uploads + 2
            )
        else:
            prefix = url.strip("/")
        self.url = url
        self.store = store
        self.prefix = prefix
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._object_lock = object_lock
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._pid = -1
        self._stopping = False
        self._handing_over = False
        self._spooled = self._uploaded = self._uploaded_events = 0
        self._retries = self._refused = self._adopted = 0
        self._seq = itertools.count(1)
        self._written_through: dict[str, None] = {}
        self._process_state()
        self._digests = DigestKeeper(self, signing_key, digest_interval)
        _live_archives.add(self)
        if spool_dir is not None:
            self._ensure_started()  # replay what stopped processes left behind, right away

    # -- per-process start ---------------------------------------------------------------------

    def _process_state(self) -> None:
        """What belongs to one process: locks and events, the uploaders, the spool (started on
        first use, ``_ensure_started``) and the store's health as the uploaders share it."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._strict_lock = threading.Lock()  # one strict write at a time; the rest queue up
        self._strict_waiting: list[_StrictWrite] = []
        self._configured = threading.Event()  # the first uploader read the bucket's lock mode
        self._threads: list[threading.Thread] = []  # the uploaders of this process
        self._spool: Spool | None = None
        # Consecutive failed uploads, when the next attempt may start, whether one is in
        # progress, how many flushes are waiting.
        self._failures = 0
        self._retry_at = self._failed_at = 0.0
        self._probing = False
        self._hurry = 0

    def _after_fork(self) -> None:
        """In a forked child: a new :meth:`_process_state` (a thread of the parent, an uploader
        say, may have held a lock at the fork, and would never release it here; the parent's
        spool and backoff are not the child's), and not the S3 client the store made, whose
        pooled connections are the parent's sockets."""
        self._process_state()
        if isinstance(self.store, S3Store):
            self.store.after_fork()

    def _ensure_started(self) -> Spool:
        if self._pid == os.getpid() and self._spool is not None:
            return self._spool
        with self._lock:
            if self._pid != os.getpid() or self._spool is None:
                self._pid = os.getpid()
                self._writer = _writer_id()
                self._seq = itertools.count(1)
                self._spool = Spool(
                    self._spool_dir,
                    max_bytes=self._spool_max_bytes,
                    writer=self._writer,
                    encode=(_encode_parquet if self.format == "parquet" else self._gzip),
                )
                self._digests.start(self._spool)
                self._adopted = self._spool.adopt_orphans(self._digests.adopt)
                self._digests.choose_stream()
                if self._adopted:
                    logger.warning(
                        "audit archive: adopted %d spooled files of stopped processes",
                        self._adopted,
                    )
                self._start_uploaders()
        assert self._spool is not None
        return self._spool

    def _start_uploaders(self) -> None:
        """Start the uploader threads that are not running (all of them, in a new process)."""
        threads = self._threads
        for slot in range(self.uploads):
            if slot < len(threads) and threads[slot].is_alive():
                continue
            thread = threading.Thread(
                target=self._upload_loop, args=(slot,), name="audit-archive-upload", daemon=True
            )
            if slot < len(threads):
                threads[slot] = thread
            else:
                threads.append(thread)
            thread.start()

    def hand_over(self, timeout: float = 30.0) -> bool:
        """Stop using the spool in this process, without flushing: the uploader stops after the
        upload in progress and the writer directory's lock is released, so that a process
        forked from this one (process delivery's, which alone writes from then on) adopts the
        directory as a stopped writer's: its sealed objects, chain head and digest state. True
        once handed over (or if nothing had started); False if the uploader did not stop within
        ``timeout``, in which case this process keeps the spool and goes on uploading."""
        spool = self._spool
        if spool is None or self._pid != os.getpid():
            return True
        self._handing_over = True
        self._wake.set()
        if not _join_all(self._threads, timeout):
            self._handing_over = False
            self._start_uploaders()  # those that stopped
            return False
        with self._lock:
            spool.close()
            self._spool, self._threads, self._pid = None, [], -1
            self._handing_over = False
        return True

    # -- integrity -----------------------------------------------------------------------------

    def chain_head(self) -> ChainHead:
        """Where this process's hash chain starts: the stream a stopped process left in the spool
        (continued, so a restart does not break the chain), or a new stream."""
        self._ensure_started()
        return self._digests.origin

    def write_digests(self) -> bool:
        """Write (signed) digests now for every object uploaded since the last; True if done."""
        if self._spool is None:
            return True
        return self._digests.write(self._ensure_started())

    # -- export --------------------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """Whether events are on disk (a spool directory) before ``export`` returns."""
        return self._spool_dir is not None

    def write_through(self, events: Sequence[AuditEvent]) -> None:
        """Strict mode: append ``events`` to the disk spool now (fsynced) or raise; the same
        events arriving later through ``export`` are skipped. Concurrent calls share a write
        (group commit): whoever writes next takes every call waiting by then, in one batch."""
        mine = _StrictWrite(events)
        with self._lock:
            self._strict_waiting.append(mine)
        with self._strict_lock:
            if not mine.done:
                with self._lock:
                    group, self._strict_waiting = self._strict_waiting, []
                ok = False
                try:
                    batch = [event for write in group for event in write.events]
                    ok = self.export(batch) is ExportResult.SUCCESS
                finally:
                    for write in group:
                        write.ok, write.done = ok, True
        if not mine.ok:
            raise OSError("audit archive: could not spool events durably")
        with self._lock:
            for event in events:
                self._written_through[event.id] = None
            while len(self._written_through) > 100_000:  # ids the pipeline dropped never come
                del self._written_through[next(iter(self._written_through))]

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Append the batch to the spool (durably, with a spool directory); never uploads here."""
        if self._written_through:
            with self._lock:
                seen = self._written_through
                fresh = [e for e in batch if e.id not in seen]
                for event in batch:
                    seen.pop(event.id, None)
            batch = fresh
            if not batch:
                return ExportResult.SUCCESS
        spool = self._ensure_started()
        now = time.time()
        groups = group_by_partition(batch, batch_lines(batch))
        try:
            with spool.batch():  # every partition's lines in one journal write and fsync
                for (org_id, day), (events, lines) in groups.items():
                    org = GLOBAL_ORG if org_id is None else _partition_value(org_id)
                    partition = f"{org}/{day}"
                    start = 0
                    while start < len(events):  # no object holds more than max_events
                        end = start + self.max_events - spool.open_events(partition)
                        segment = spool.append(
                            partition,
                            _KeyMaker(self, org, day),
                            lines[start:end],
                            now,
                            _span(events[start], events[min(end, len(events)) - 1]),
                        )
                        if segment.events >= self.max_events or segment.size >= self.max_bytes:
                            spool.seal(partition)
                            self._wake.set()
                        start = end
        except SpoolFull:
            self._refused += len(batch)
            warn_limited(
                "archive-spool-full",
                "audit archive spool is full (%d bytes): refused %d events; they are retried "
                "and counted by the pipeline",
                self._spool_max_bytes,
                len(batch),
            )
            return ExportResult.FAILURE
        except SpoolClosed:
            warn_limited(
                "archive-closed",
                "audit archive was shut down: refused %d events; they are retried and counted "
                "by the pipeline",
                len(batch),
            )
            return ExportResult.FAILURE
        except OSError:
            logger.exception("audit archive could not write its spool")
            return ExportResult.FAILURE
        self._spooled += len(batch)
        self._digests.spooled(batch)
        return ExportResult.SUCCESS

    def _next_key(self, org: str, day: str) -> str:
        # No lock: the spool calls this while holding its own lock, and stats() takes ours then
        # the spool's. itertools.count is atomic under the GIL.
        seq = next(self._seq)
        name = f"org_id={org}/dt={day}/{self._writer}-{seq:010d}{self._suffix}"
        return f"{self.prefix}/{name}" if self.prefix else name

    # -- upload --------------------------------------------------------------------------------

    def _upload_loop(self, slot: int) -> None:
        """One uploader: claim the oldest sealed object no other uploader has and store it.
        Slot 0 also reads the bucket's lock mode first (the others wait for it), seals segments
        that are old enough and writes digests when due. While the store fails, the uploaders
        share one jittered exponential backoff, and one of them at a time tries again."""
        spool = self._spool
        assert spool is not None
        if slot == 0:
            try:
                self._configure_lock()
            finally:
                self._configured.set()
        else:
            self._configured.wait()
        while True:
            if self._handing_over:  # another process takes this spool over (hand_over)
                return
            if slot == 0:
                self._seal_old(spool)
                self._digests.maybe_write(spool)
            with self._lock:
                if self._failures and self._stopping and self._give_up_at <= time.monotonic():
                    self._idle.notify_all()
                    return
                wait = self._backoff_left()
                probing = not wait and self._failures > 0
                if probing:  # _backoff_left: no other uploader is probing
                    self._probing = True
            if wait:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            sealed: Sealed | None = None
            stored = False
            try:
                sealed = spool.claim()
                stored = sealed is not None and self._try_upload(spool, sealed)
            finally:
                if probing:
                    with self._lock:
                        self._probing = False
            if sealed is None:
                with self._lock:
                    self._idle.notify_all()
                    if self._stopping:
                        return
                self._wake.wait(min(1.0, self.max_age))
                self._wake.clear()
            elif stored and probing:
                self._wake.set()  # the store is back: every uploader resumes

    def _try_upload(self, spool: Spool, sealed: Sealed) -> bool:
        """Upload a claimed object; on failure, give it back and extend the shared backoff."""
        if self._upload(spool, sealed):
            with self._lock:
                self._failures, self._retry_at = 0, 0.0
            return True
        spool.release(sealed)
        with self._lock:
            self._failures += 1
            self._retries += 1
            now = time.monotonic()
            cap = min(_BACKOFF_CAP_S, 0.2 * 2**self._failures)
            self._retry_at = now + random.uniform(0, cap)  # noqa: S311
            self._failed_at = now
        return False

    def _backoff_left(self) -> float:
        """Seconds this uploader waits before trying the store (hold ``_lock``): none while the
        store works; while it fails, until the shared backoff ends (during a flush, at most
        half a second after the last failure), and while another uploader's attempt is in
        progress, until that one ends (at most a second)."""
        if not self._failures:
            return 0.0
        if self._probing:
            return 1.0
        retry_at = self._retry_at
        if self._hurry:
            retry_at = min(retry_at, self._failed_at + _HURRIED_RETRY_S)
        return max(0.0, retry_at - time.monotonic())

    def _upload(self, spool: Spool, sealed: Sealed) -> bool:
        try:
            body = spool.body(sealed)
            self.store.put(sealed.key, body)
        except Exception as exc:
            warn_limited(
                "archive-upload",
                "audit archive upload to %s failed (%s); retrying with backoff",
                self.store.description,
                type(exc).__name__,
            )
            return False
        events = max(sealed.events, 0)
        try:
            self._digests.uploaded(spool, sealed, body)
        except OSError:
            logger.exception("audit archive could not record an upload for its digest")
            return False
        with self._lock:  # counted by the time a flush, which holds this lock, sees it gone
            self._uploaded += 1
            self._uploaded_events += events
            spool.done(sealed)
        return True

    def _seal_old(self, spool: Spool) -> None:
        now = time.time()
        for partition, segment in spool.open_segments():
            if now - segment.created >= self.max_age:
                spool.seal(partition)

    def _check_bucket(self) -> None:
        """Report a misconfigured bucket (no versioning, a lock shorter than retention...)."""
        if not isinstance(self.store, S3Store):
            return
        from exporters.s3_bucket import inspect_bucket

        try:
            findings = inspect_bucket(
                self.store.client,
                self.store.bucket,
                retention_days=self.store.retention_days,
                prefix=self.prefix,
            )
        except Exception as exc:
            logger.warning("audit archive: could not inspect the bucket (%s)", type(exc).__name__)
            return
        for finding in findings:
            logger.warning("audit archive bucket %s: %s", finding.severity, finding.message)

    def _configure_lock(self) -> None:
        self._check_bucket()
        if self._object_lock is None or not isinstance(self.store, S3Store):
            return
        if self._object_lock != "auto":
            self.store.lock_mode = self._object_lock
            return
        try:
            self.store.lock_mode = self.store.object_lock_mode()
        except Exception as exc:
            logger.warning(
                "audit archive: could not read the bucket's Object Lock configuration (%s)",
                type(exc).__name__,
            )

    # -- control -------------------------------------------------------------------------------

    def force_flush(self, timeout: float | None = None) -> bool:
        """Seal every open segment and wait until the store acknowledged all; True if it did."""
        if self._spool is None:
            return True
        spool = self._ensure_started()
        spool.seal_all(lambda _: self._wake.set())  # each uploaded while the next is sealed
        deadline = time.monotonic() + (30.0 if timeout is None else timeout)
        with self._lock:
            self._hurry += 1  # a failing store is tried again soon, not after the whole backoff
            try:
                while spool.pending():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.set()
                    self._idle.wait(min(remaining, 0.5))
            finally:
                self._hurry -= 1
            return spool.pending() == 0

    def shutdown(self, timeout: float | None = None) -> None:
        """Flush within ``timeout``; whatever is left stays in a durable spool for next time."""
        if self._spool is None:
            return
        flushed = self.force_flush(timeout)
        with self._lock:
            self._stopping = True
            self._give_up_at = time.monotonic()
        self._wake.set()
        _join_all(self._threads, 1.0)
        if flushed and not self._digests.write(self._spool):
            logger.warning("audit archive: digests not written at shutdown; kept for next start")
        logger.info("audit archive at shutdown: %s", self.stats())
        if not flushed:
            where = "kept in the spool for the next start" if self._spool.durable else "lost"
            logger.warning(
                "audit archive: %d objects not uploaded at shutdown: %s",
                self._spool.pending(),
                where,
            )
        self._spool.close()

    def stats(self) -> ArchiveStats:
        """A snapshot of the counters."""
        spool = self._spool
        with self._lock:
            return ArchiveStats(
                spooled_events=self._spooled,
                uploaded_objects=self._uploaded,
                uploaded_events=self._uploaded_events,
                pending_objects=0 if spool is None else spool.pending(),
                spool_bytes=0 if spool is None else spool.used_bytes,
                retries=self._retries,
                refused_events=self._refused,
                adopted_files=self._adopted,
            )

    _give_up_at = float("inf")
    _writer = ""


class _StrictWrite:
    """A strict-mode call waiting for its events to be on disk."""

    __slots__ = ("done", "events", "ok")

    def __init__(self, events: Sequence[AuditEvent]) -> None:
        self.events = events
        self.done = False
        self.ok = False


class _KeyMaker:
    """The key of a new segment, numbered only when a segment is really opened."""

    def __init__(self, exporter: ArchiveExporter, org: str, day: str) -> None:
        self._exporter, self._org, self._day = exporter, org, day

    def __call__(self) -> str:
        return self._exporter._next_key(self._org, self._day)


def _span(first_event: AuditEvent, last_event: AuditEvent) -> ChainSpan | None:
    """The chain span from ``first_event`` to ``last_event``, of one stream in ascending ``seq``
    (None without integrity)."""
    first, last = first_event.integrity, last_event.integrity
    if first is None or last is None:
        return None
    return ChainSpan(first["stream"], first["seq"], last["seq"], last["hash"])


_live_archives: weakref.WeakSet[ArchiveExporter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for archive in list(_live_archives):
        archive._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _join_all(threads: Sequence[threading.Thread], timeout: float) -> bool:
    """Wait for every thread to end, ``timeout`` seconds in all; True if they all did."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _encode_parquet(raw: bytes) -> bytes:
    from exporters._parquet import encode_parquet

    return encode_parquet(raw)


_UNSAFE_HOST = re.compile(r"[^A-Za-z0-9.-]")


def _writer_id() -> str:
    host = _UNSAFE_HOST.sub("-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


@functools.lru_cache(maxsize=4096)
def _partition_value(org_id: str) -> str:
    """Org ids as safe Hive partition values: percent-encoded, bounded."""
    value = quote(org_id, safe="-_.~")[:200]
    return value if value and value != GLOBAL_ORG else f"%5F{value[1:]}"
