"""The delivery pipeline: a bounded queue drained by a background thread into exporters.

``submit`` is the only call on the request path: an O(1) append to a deque, no lock, no I/O.
A dispatcher thread builds events in batches (by size or interval) and hands each batch to one
*lane* per exporter: a thread with its own bounded backlog, retries with jittered backoff and
counters, so a slow, failing or hung exporter never delays the others or the application.
Every event that does not reach an exporter is counted and reported: overflow of the queue,
overflow of a lane's backlog, retries exhausted, build errors, or a shutdown deadline.

On an asyncio event loop (an ASGI server), the building is done on the loop instead, a few
dozen queued requests per loop turn (``loop_build``), scheduled when that many are waiting. A
CPU-bound dispatcher thread next to a loop that does I/O holds the GIL for up to a switch
interval (5 ms) at a time, and the loop waits for it after its system calls; on the loop, the
pause is one chunk long. ``benchmarks/server_variants.py`` compares both (``audit``,
``audit-lb0``). The dispatcher thread still drains by interval, handles flushes and takes over
when no loop runs.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import random
import threading
import time
import weakref
from asyncio import AbstractEventLoop
from asyncio import _get_running_loop as running_loop
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from audit_middleware._batch import EventBatch, batch_lines, extend_batch, new_batch
from audit_middleware._config import OverflowPolicy
from audit_middleware._event import AuditEvent
from audit_middleware._export import Exporter, ExportResult
from audit_middleware._lines import event_line
from audit_middleware._warn import logger, warn_limited

__all__ = ["DeliveryPipeline", "ExporterStats", "PipelineStats"]

_BACKOFF_BASE_S: Final = 0.1
_BACKOFF_CAP_S: Final = 5.0
_MERGE_UP_TO: Final = 8192
_CLOSING_POLL_S: Final = 0.05  # a paced dispatcher checks this often whether shutdown began


@dataclass(frozen=True, slots=True)
class ExporterStats:
    """Counters of one exporter lane, in events."""

    name: str
    exported: int
    pending: int
    retries: int
    dropped: int


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Counters of a pipeline, in events. ``dropped`` sums every way an event was lost."""

    queued: int
    processed: int
    dropped_overflow: int
    dropped_closed: int
    build_errors: int
    exporters: tuple[ExporterStats, ...]

    @property
    def dropped(self) -> int:
        """Events lost before reaching every exporter (per-exporter losses included)."""
        lost = self.dropped_overflow + self.dropped_closed + self.build_errors
        return lost + sum(e.dropped for e in self.exporters)


class _Marker:
    """A flush or stop request travelling through the queue behind the events before it."""

    def __init__(self, lanes: int, deadline: float, stop: bool) -> None:
        self.deadline = deadline
        self.stop = stop
        self._remaining = lanes
        self._ok = True
        self._lock = threading.Lock()
        self.done = threading.Event()
        if lanes == 0:
            self.done.set()

    def lane_done(self, ok: bool) -> None:
        with self._lock:
            self._ok = self._ok and ok
            self._remaining -= 1
            if self._remaining <= 0:
                self.done.set()

    def wait(self) -> bool:
        return self.done.wait(max(0.0, self.deadline - time.monotonic())) and self._ok


class _Lane:
    """One exporter's thread, backlog and counters."""

    def __init__(
        self, exporter: Exporter, name: str, max_pending: int, retries: int, merge_up_to: int
    ) -> None:
        self.exporter = exporter
        self.name = name
        self.max_pending = max_pending
        self.retries = retries
        #: Batches that queued up behind a slow export are merged, up to this many events, when
        #: the exporter allows it (``merges_batches``): fewer, larger writes (one fsync each).
        self.merge_up_to = merge_up_to if getattr(exporter, "merges_batches", False) else 0
        self.exported = 0
        self.retried = 0
        self.dropped = 0
        self.pending = 0
        self._items: collections.deque[EventBatch | _Marker] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"audit-export-{self.name}", daemon=True
        )
        self.thread.start()

    def put(self, item: EventBatch | _Marker) -> None:
        with self._cond:
            if isinstance(item, list):
                if self.pending + len(item) > self.max_pending:
                    self.dropped += len(item)
                    warn_limited(
                        f"lane-full:{self.name}",
                        "audit exporter %r is not keeping up (backlog %d events): "
                        "dropped %d audit events (total dropped by it: %d)",
                        self.name,
                        self.pending,
                        len(item),
                        self.dropped,
                    )
                    return
                self.pending += len(item)
            elif item.stop:
                self._deadline = min(self._deadline, item.deadline)
                self._stopping.set()  # cut a retry backoff short; the deadline now rules
            self._items.append(item)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
                if self.merge_up_to and type(item) is EventBatch:
                    item = self._merge_waiting(item)
            if isinstance(item, _Marker):
                remaining = max(0.0, item.deadline - time.monotonic())
                try:
                    if item.stop:
                        self.exporter.shutdown(remaining)
                        ok = True
                    else:
                        ok = bool(self.exporter.force_flush(remaining))
                except Exception:
                    logger.exception("audit exporter %r failed to flush", self.name)
                    ok = False
                item.lane_done(ok)
                if item.stop:
                    return
                continue
            self._export(item)

    def _merge_waiting(self, batch: EventBatch) -> EventBatch:
        """``batch`` plus the batches queued right behind it, up to ``merge_up_to`` events."""
        items = self._items
        if not items or type(items[0]) is not EventBatch:
            return batch
        merged = new_batch()
        while True:
            extend_batch(merged, batch)
            if not items or type(items[0]) is not EventBatch:
                break
            if len(merged) + len(items[0]) > self.merge_up_to:
                break
            batch = items.popleft()  # type: ignore[assignment]
        return merged

    def _export(self, batch: EventBatch) -> None:
        attempt = 0
        while True:
            try:
                result = self.exporter.export(batch)
            except Exception:
                logger.exception("audit exporter %r raised", self.name)
                result = ExportResult.FAILURE
            if result is ExportResult.SUCCESS:
                with self._cond:
                    self.exported += len(batch)
                    self.pending -= len(batch)
                    self._cond.notify_all()  # a paced dispatcher may wait for this
                return
            delay = random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt))  # noqa: S311
            give_up = attempt >= self.retries or time.monotonic() + delay > self._deadline
            if give_up:
                with self._cond:
                    self.dropped += len(batch)
                    self.pending -= len(batch)
                    self._cond.notify_all()
                warn_limited(
                    f"export-failed:{self.name}",
                    "audit exporter %r failed %d time(s); dropped a batch of %d audit events "
                    "(first id %s; total dropped by it: %d)",
                    self.name,
                    attempt + 1,
                    len(batch),
                    # process delivery's link carries some records unbuilt, without an id yet
                    getattr(batch[0], "id", "not assigned yet"),
                    self.dropped,
                )
                return
            attempt += 1
            with self._cond:
                self.retried += len(batch)
            self._stopping.wait(delay)

    def wait_below(self, events: int, closing: Callable[[], bool]) -> None:
        """Wait until no more than ``events`` built events are pending here (each export that
        ends, in success or given up, lowers the count), or until ``closing()``."""
        with self._cond:
            while self.pending > events and not closing():
                self._cond.wait(_CLOSING_POLL_S)

    def stats(self) -> ExporterStats:
        with self._cond:
            return ExporterStats(self.name, self.exported, self.pending, self.retried, self.dropped)


class DeliveryPipeline:
    """Bounded queue → batches → exporter lanes. Threads start on first use and after ``fork``."""

    def __init__(
        self,
        exporters: Sequence[Exporter],
        build: Callable[[object], Sequence[AuditEvent]],
        *,
        queue_size: int,
        overflow: OverflowPolicy,
        batch_size: int,
        batch_interval: float,
        export_retries: int,
        shutdown_timeout: float,
        on_built: Callable[[AuditEvent], None] | None = None,
        seal: Callable[[Sequence[AuditEvent], bool], EventBatch] | None = None,
        loop_build: int = 0,
        pace: int = 0,
    ) -> None:
        self._exporters = tuple(exporters)
        self._seal = seal
        #: Render each event's JSON line once, in the dispatcher, when an exporter writes lines
        #: (the chain renders the events it seals anyway).
        self.render_lines = any(getattr(e, "writes_lines", False) for e in self._exporters)
        self._build = build
        self._on_built = on_built
        self.queue_size = queue_size
        self.overflow = overflow
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.export_retries = export_retries
        self.shutdown_timeout = shutdown_timeout
        #: Queued requests built per event-loop turn when ``submit`` runs on a loop (0: never
        #: build on the loop, only in the dispatcher thread).
        self.loop_build = loop_build
        #: Build no further ahead of the lanes than this many events (0: no limit). Queued
        #: items wait instead, which costs the garbage collector nothing for ``record()``'s
        #: plain tuples, while built events are traversed by every collection until exported.
        #: For a pipeline with one lane (with several, a slow exporter would hold the others
        #: back); a slow or hung exporter then fills the queue instead of its lane's backlog,
        #: and the queue's overflow policy counts what it drops. Once shutdown begins, the
        #: dispatcher no longer waits.
        self.pace = pace
        self._reset()
        _live_pipelines.add(self)

    def _reset(self) -> None:
        self._queue: collections.deque[object] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # Held by whoever drains (dispatcher or loop); guards _pending, keeps batches in order.
        self._drain_lock = threading.Lock()
        self._pending: EventBatch | None = None  # built, not yet handed to the lanes
        self._loop_drain: AbstractEventLoop | None = None  # the loop a drain is scheduled on
        self._held = False  # a loop turn was held back by pacing: the dispatcher takes over
        self._started = False
        self._closed = False
        self._processed = 0
        self._dropped_overflow = 0
        self._dropped_closed = 0
        self._build_errors = 0
        self._dispatcher: threading.Thread | None = None
        names: dict[str, int] = {}
        self._lanes: list[_Lane] = []
        for exporter in self._exporters:
            name = type(exporter).__name__
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}#{names[name]}"
            self._lanes.append(
                _Lane(
                    exporter,
                    name,
                    self.queue_size,
                    self.export_retries,
                    merge_up_to=max(self.batch_size, _MERGE_UP_TO),
                )
            )

    # -- request path ---------------------------------------------------------------------------

    def submit(self, item: object) -> bool:
        """Queue one item for delivery. Never blocks; returns False if it was dropped."""
        if not self._started:
            self._start()
        queue = self._queue
        if len(queue) >= self.queue_size or self._closed:
            return self._reject(item)
        queue.append(item)
        waiting = len(queue)
        if waiting >= self.batch_size:
            if not self._wake.is_set():
                self._wake.set()
        elif (
            self.loop_build
            and waiting >= self.loop_build
            and self._loop_drain is None
            and not self._held
        ):
            self._schedule_loop_drain()
        return True

    def deliver_now(self, items: Sequence[object]) -> None:
        """Build ``items`` on the calling thread and hand them to the lanes, behind anything
        queued before: for a caller that is itself a background thread (the delivery process's
        reader), which then waits for the work rather than queueing it."""
        if not self._accepting(items):
            return
        self._queue.extend(items)
        with self._drain_lock:  # flush and stop requests come from this same caller, later
            self._drain(None)

    def deliver_built(self, events: list[AuditEvent]) -> None:
        """:meth:`deliver_now` for events the caller built itself, all at once (the delivery
        process's reader unpacks whole frames): sealed, rendered and handed to the lanes as
        one batch, behind anything queued before."""
        if not self._accepting(events):
            return
        with self._drain_lock:
            self._drain(None)
            self._processed += len(events)
            self._add(events, [True] * len(events))
            self._hand_over()

    def _accepting(self, items: Sequence[object]) -> bool:
        """Start the threads if needed; False once closed (each item counted as dropped)."""
        if not self._started:
            self._start()
        if self._closed:
            for item in items:
                self._reject(item)
            return False
        return True

    def _schedule_loop_drain(self) -> None:
        """Have the running event loop, if any, build the next chunk on its next turn."""
        loop = running_loop()
        if loop is not None:
            self._loop_drain = loop
            loop.call_soon(self._drain_on_loop)

    def _reject(self, item: object) -> bool:
        with self._lock:
            if self._closed:
                self._dropped_closed += 1
                warn_limited(
                    "closed",
                    "audit event submitted after shutdown; dropped (total: %d)",
                    self._dropped_closed,
                )
                return False
            self._dropped_overflow += 1
            dropped = self._dropped_overflow
            if self.overflow == "drop_oldest":
                with contextlib.suppress(IndexError):
                    self._queue.popleft()
                self._queue.append(item)
        warn_limited(
            "overflow",
            "audit queue full (%d events, policy %s): dropped an audit event (total: %d)",
            self.queue_size,
            self.overflow,
            dropped,
        )
        return self.overflow == "drop_oldest"

    # -- worker ---------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for lane in self._lanes:
                lane.start()
            self._dispatcher = threading.Thread(
                target=self._run, name="audit-dispatcher", daemon=True
            )
            self._dispatcher.start()
            self._started = True

    def _run(self) -> None:
        while True:
            self._wake.wait(self.batch_interval)
            self._wake.clear()
            with self._drain_lock:
                self._loop_drain = None  # a drain scheduled on a loop that closed is forgotten
                if self._drain(None):
                    return
                self._held = False

    def _drain_on_loop(self) -> None:
        """Build up to ``loop_build`` queued requests on the event loop (never waits: when the
        dispatcher is draining, it takes them); schedule the next turn if more are waiting."""
        self._loop_drain = None
        if not self._drain_lock.acquire(blocking=False):
            return
        try:
            self._drain(self.loop_build)
        except Exception:  # never let the audit break the loop; the dispatcher carries on
            logger.exception("audit pipeline: building on the event loop failed")
        finally:
            self._drain_lock.release()
        if self._closed:
            return
        waiting = len(self._queue)
        if waiting >= self.batch_size:
            self._wake.set()
        elif waiting >= self.loop_build and self._loop_drain is None and not self._held:
            self._schedule_loop_drain()

    def _drain(self, limit: int | None) -> bool:
        """Build what is queued, up to ``limit`` items and up to a flush marker when a limit is
        given (an event-loop turn), all of it otherwise (the dispatcher, which then also hands
        over the partial batch). True once a stop marker went through. Hold ``_drain_lock``."""
        queue = self._queue
        build = self._build
        chunk = self.batch_size if limit is None else min(limit, self.batch_size)
        events: list[AuditEvent] = []
        fresh: list[bool] = []  # built here, not queued already built
        taken = 0
        while queue:
            if limit is not None and (taken >= limit or type(queue[0]) is _Marker):
                break
            if self.pace and not events and self._held_back(limit is not None):
                break
            try:
                item = queue.popleft()
            except IndexError:
                break
            taken += 1
            if type(item) is _Marker:
                self._add(events, fresh)
                events, fresh = [], []
                self._hand_over()
                for lane in self._lanes:
                    lane.put(item)
                if item.stop:
                    return True
                continue
            self._processed += 1
            try:
                built = build(item)
            except Exception:
                self._build_errors += 1
                logger.exception("could not build an audit event; it is lost (counted)")
                continue
            for event in built:
                events.append(event)
                fresh.append(event is not item)
            if len(events) >= chunk:
                self._add(events, fresh)
                events, fresh = [], []
        self._add(events, fresh)
        if limit is None:
            self._hand_over()
        return False

    def _held_back(self, loop_turn: bool) -> bool:
        """With pacing, before a chunk: True for an event-loop turn (which never waits) while a
        lane holds more than ``pace`` built events; the dispatcher thread waits instead, until
        that lane holds at most half as many."""
        for lane in self._lanes:
            if lane.pending > self.pace:
                if loop_turn:
                    self._held = True
                    self._wake.set()
                    return True
                lane.wait_below(self.pace // 2, self._is_closed)
        return False

    def _is_closed(self) -> bool:
        return self._closed

    def _add(self, events: list[AuditEvent], fresh: list[bool]) -> None:
        """Seal and render ``events`` and add them to the pending batch; hand the pending batch
        to the lanes first if they would not fit in it."""
        if not events:
            return
        batch, fresh = self._finish(events, fresh)
        if self._on_built is not None:
            for event, is_fresh in zip(batch, fresh, strict=True):
                if is_fresh:
                    self._on_built(event)
        if not batch:
            return
        pending = self._pending
        if pending is not None and len(pending) + len(batch) > self.batch_size:
            self._hand_over()
            pending = None
        if pending is None:
            self._pending = pending = batch
        else:
            extend_batch(pending, batch)
        if len(pending) >= self.batch_size:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the pending batch to every lane."""
        batch, self._pending = self._pending, None
        if batch:
            for lane in self._lanes:
                lane.put(batch)

    def _finish(self, events: list[AuditEvent], fresh: list[bool]) -> tuple[EventBatch, list[bool]]:
        """Seal the events built here into the hash chain (one call for all) and render the
        lines the exporters write, if any does; events queued already built pass as they are.
        An event that cannot be sealed or rendered is counted and left out."""
        seal, render = self._seal, self.render_lines
        if seal is None and not render:
            batch = EventBatch(events)
            batch.lines = None
            return batch, fresh
        if seal is not None:
            # A failed seal advanced the chain for none: find the culprit one event at a time.
            with contextlib.suppress(Exception):
                if all(fresh):
                    return seal(events, render), fresh
                return self._seal_fresh(seal, events, fresh, render), fresh
        batch = EventBatch()
        lines: list[bytes] | None = [] if render else None
        kept: list[bool] = []
        for event, is_fresh in zip(events, fresh, strict=True):
            try:
                if seal is not None and is_fresh:
                    one = seal((event,), render)
                    event = one[0]
                    line = batch_lines(one)[0] if render else b""
                else:
                    line = event_line(event) if render else b""
            except Exception:
                self._build_errors += 1
                logger.exception("could not seal or render an audit event; it is lost (counted)")
                continue
            batch.append(event)
            if lines is not None:
                lines.append(line)
            kept.append(is_fresh)
        batch.lines = lines
        return batch, kept

    @staticmethod
    def _seal_fresh(
        seal: Callable[[Sequence[AuditEvent], bool], EventBatch],
        events: list[AuditEvent],
        fresh: list[bool],
        render: bool,
    ) -> EventBatch:
        """The batch with only its freshly built events sealed, in their order. The others are
        rendered first (when rendering), so that a failure leaves the chain where it was."""
        pairs = list(zip(events, fresh, strict=True))
        others = iter([event_line(event) for event, is_fresh in pairs if render and not is_fresh])
        sealed = seal([event for event, is_fresh in pairs if is_fresh], render)
        new_events = iter(sealed)
        new_lines = iter(batch_lines(sealed) if render else ())
        batch = EventBatch()
        lines: list[bytes] | None = [] if render else None
        for event, is_fresh in pairs:
            batch.append(next(new_events) if is_fresh else event)
            if lines is not None:
                lines.append(next(new_lines) if is_fresh else next(others))
        batch.lines = lines
        return batch

    # -- control --------------------------------------------------------------------------------

    def force_flush(self, timeout: float | None = None) -> bool:
        """Deliver everything submitted so far; True only if every exporter confirmed it in time."""
        if self._closed:
            return False
        if not self._started:
            self._start()
        before = self._lost()
        marker = _Marker(len(self._lanes), time.monotonic() + self._timeout(timeout), stop=False)
        self._queue.append(marker)
        self._wake.set()
        return marker.wait() and self._lost() == before

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, then shut every exporter down; True if nothing was lost on the way."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        if not self._started:
            self._start()
        before = self._lost()
        deadline = time.monotonic() + self._timeout(timeout)
        marker = _Marker(len(self._lanes), deadline, stop=True)
        self._queue.append(marker)
        self._wake.set()
        ok = marker.wait()
        stats = self.stats()
        if not ok:
            pending = stats.queued + sum(e.pending for e in stats.exporters)
            logger.warning(
                "audit pipeline shutdown timed out: %d audit events not confirmed delivered",
                pending,
            )
        if stats.dropped:
            logger.warning("audit pipeline lost %d audit events: %s", stats.dropped, stats)
        return ok and self._lost() == before

    def _timeout(self, timeout: float | None) -> float:
        return self.shutdown_timeout if timeout is None else max(0.0, timeout)

    def _lost(self) -> int:
        return self.stats().dropped

    def stats(self) -> PipelineStats:
        """A snapshot of the counters."""
        pending = self._pending
        return PipelineStats(
            queued=sum(1 for item in list(self._queue) if not isinstance(item, _Marker))
            + (0 if pending is None else len(pending)),
            processed=self._processed,
            dropped_overflow=self._dropped_overflow,
            dropped_closed=self._dropped_closed,
            build_errors=self._build_errors,
            exporters=tuple(lane.stats() for lane in self._lanes),
        )

    def _after_fork(self) -> None:
        # The child gets no threads; the parent still delivers what was queued before the fork.
        self._reset()


_live_pipelines: weakref.WeakSet[DeliveryPipeline] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pipeline in list(_live_pipelines):
        pipeline._after_fork()


def _at_exit() -> None:
    for pipeline in list(_live_pipelines):
        if pipeline._started and not pipeline._closed:
            pipeline.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
