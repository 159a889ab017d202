"""Delivery in forked processes (``AUDIT_LOG_DELIVERY=process``).

The application's process builds each event, as in thread delivery, and hands batches to
:class:`DeliveryProcess`, an exporter that writes them as ``marshal`` frames (:mod:`._wire`) to
processes forked for the purpose (one by default; ``AUDIT_LOG_DELIVERY_PROCESSES``). Each seals
its events into a hash-chain stream of its own, renders their lines and runs the real exporters
in a pipeline of its own: that work no longer shares the application's GIL, and with several
processes a batch is split between them, which work on their parts side by side
(``docs/performance.md`` measures what moves).

* **Forked lazily**, from the export thread, on the first batch; again after one died, and in
  each process forked from the application (a pre-forking server's workers get their own).
* **Acknowledged.** Each frame is answered once the child has sealed its events and handed
  them to its exporters' lanes (each with its own bounded backlog, as in thread delivery);
  the reply carries the child's counters. A child that dies or stops answering
  (``reply_timeout``) is killed; the part of the batch it had not confirmed is sent again, to a
  new child (retries with backoff), so an event can at worst arrive twice, never silently not
  at all. Events a dead child had accepted but not delivered are counted as dropped (an upper
  bound: its last counters).
* **Stopped by its parent.** A child ignores SIGINT and SIGTERM and stops once its parent
  shuts the pipeline down or closes the socket (exits, or is killed): it then flushes and
  shuts its exporters down within ``shutdown_timeout``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import marshal
import os
import signal
import socket
import stat
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Final

from audit_middleware._event import AuditEvent
from audit_middleware._export import ExportResult
from audit_middleware._pipeline import DeliveryPipeline, ExporterStats, PipelineStats
from audit_middleware._warn import logger, warn_limited
from audit_middleware._wire import Unpacker, pack_events

__all__ = ["DeliveryProcess", "deliver_frame"]

_EVENTS: Final = 1
_FLUSH: Final = 2
_SHUTDOWN: Final = 3
_REQUEST: Final = struct.Struct("<BIQ")  # kind, request id, payload length
_REPLY: Final = struct.Struct("<IQ")  # request id, payload length
_SECONDS: Final = struct.Struct("<d")  # a flush's or shutdown's timeout
_GC_THRESHOLDS: Final = (50_000, 20, 10)  # the delivery process's collector (default 700, 10, 10)
_STATS_EVERY_S: Final = 0.05  # counters ride on a reply at most this often (they cost O(queue))
_MIN_PART: Final = 64  # a batch is split between delivery processes in parts at least this long

#: What the child reports: ok, then its counters (or None when unchanged since recently).
_Counters = tuple[int, int, int, int, int, tuple[tuple[str, int, int, int, int], ...]]


class _Child:
    """One delivery process as the parent sees it: its socket, pid and counters."""

    __slots__ = ("accepted", "counters", "pid", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.pid = 0
        self.accepted = 0  # events it confirmed queued
        self.counters: _Counters | None = None  # its last counters


class DeliveryProcess:
    """An exporter that forwards batches to forked delivery processes (see the module doc).

    ``make_pipeline`` is called in each child, once, to build the pipeline that seals, renders
    and exports there; ``build`` of that pipeline receives the plain tuples of :mod:`._wire`
    (use :meth:`Unpacker.event`). ``before_fork`` runs in this process before each fork.
    With ``processes`` above 1, each batch is split between that many children, which work on
    their parts side by side (each its own hash-chain stream and archive writer).
    """

    merges_batches = True  # fewer, larger frames when the children fall behind

    def __init__(
        self,
        make_pipeline: Callable[[Unpacker], DeliveryPipeline],
        *,
        processes: int = 1,
        reply_timeout: float = 10.0,
        before_fork: Callable[[], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self._make_pipeline = make_pipeline
        self._before_fork = before_fork
        self.reply_timeout = reply_timeout
        self._lock = threading.Lock()  # counters, read by stats() from any thread
        self._slots = tuple(_Child() for _ in range(processes))
        self._ids = itertools.count(1)
        self._turn = itertools.count()  # which child a batch too small to split goes to
        #: The batch of the last export that failed, and its parts no child confirmed.
        self._partial: tuple[Sequence[AuditEvent], list[tuple[int, int, int]]] | None = None
        self._children = 0
        self._lost = 0  # events dead children had queued and not delivered (upper bound)
        self._lost_at_flush = 0
        self._retired: dict[str, list[int]] = {}  # dead children's lane totals, by name
        self._retired_top = [0, 0, 0]  # dead children's overflow, closed, build errors
        _live.add(self)

    # -- exporter contract ----------------------------------------------------------------------

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Send ``batch`` (split between the children) and wait for every answer; SUCCESS once
        each child confirmed its part queued. After a FAILURE (a child lost), the retry of the
        same batch sends only the parts no child confirmed, to a new child: a record crosses
        unbuilt and gets its id where it is built, so a part sent twice would be archived twice
        under different ids."""
        partial = self._partial
        parts = partial[1] if partial is not None and partial[0] is batch else self._split(batch)
        whole = len(batch)
        calls = [
            (self._slots[slot], pack_events(batch if end - start == whole else batch[start:end]))
            for slot, start, end in parts
        ]
        answers = self._exchange(_EVENTS, calls, self.reply_timeout)
        missed: list[tuple[int, int, int]] = []
        with self._lock:
            for (slot, start, end), answer in zip(parts, answers, strict=True):
                if answer is None:
                    missed.append((slot, start, end))
                else:
                    self._slots[slot].accepted += end - start
        self._partial = (batch, missed) if missed else None
        return ExportResult.FAILURE if missed else ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Have the children deliver everything they were sent; True if all their exporters
        confirmed it."""
        wait = self.reply_timeout if timeout is None else max(0.0, timeout)
        payload = _SECONDS.pack(_inner(wait))
        answers = self._exchange(_FLUSH, [(c, payload) for c in self._running()], wait)
        with self._lock:  # events a child lost since the last flush make this one fail
            lost, self._lost_at_flush = self._lost - self._lost_at_flush, self._lost
        return all(answers) and not lost

    def shutdown(self, timeout: float | None = None) -> None:
        """Have the children flush, shut their exporters down and exit; wait for them within
        ``timeout``."""
        running = self._running()
        if not running:
            return
        wait = self.reply_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + wait
        payload = _SECONDS.pack(_inner(wait))
        answers = self._exchange(_SHUTDOWN, [(c, payload) for c in running], wait)
        for child, answer in zip(running, answers, strict=True):
            if answer is not None:  # (a lost child was closed already)
                self._close(child, deadline)

    # -- counters -------------------------------------------------------------------------------

    @property
    def processes(self) -> int:
        """How many delivery processes share the work."""
        return len(self._slots)

    @property
    def pid(self) -> int:
        """The first running delivery process's pid (0 when none runs)."""
        pids = self.pids
        return pids[0] if pids else 0

    @property
    def pids(self) -> tuple[int, ...]:
        """The pids of the delivery processes that run."""
        return tuple(c.pid for c in self._slots if c.sock is not None)

    @property
    def children(self) -> int:
        """How many delivery processes this one started (more than ``processes``: some died)."""
        return self._children

    def combine(self, parent: PipelineStats) -> PipelineStats:
        """``parent`` (this process's pipeline, whose one exporter is this object) with the
        delivery processes' counters: their exporters replace this one, whose losses on the
        way (dropped by its lane, or with a dead child) are added to theirs as ``dropped``."""
        with self._lock:
            running = [c.counters for c in self._slots if c.counters is not None]
            retired = {name: list(totals) for name, totals in self._retired.items()}
            top = list(self._retired_top)
            lost = self._lost
        queued = parent.queued
        link_dropped = lost
        for lane in parent.exporters:
            queued += lane.pending
            link_dropped += lane.dropped
        for c_queued, _, overflow, closed, errors, lanes in running:
            queued += c_queued
            top = [top[0] + overflow, top[1] + closed, top[2] + errors]
            for name, exported, pending, retries, dropped in lanes:
                totals = retired.setdefault(name, [0, 0, 0, 0])
                totals[0] += exported
                totals[1] += pending  # (a dead child's pending is in its losses)
                totals[2] += retries
                totals[3] += dropped
        exporters = tuple(
            ExporterStats(name, exported, pending, retries, dropped)
            for name, (exported, pending, retries, dropped) in retired.items()
        )
        if link_dropped:  # charged to the first exporter: lost before reaching any
            first = exporters[0] if exporters else ExporterStats("delivery-process", 0, 0, 0, 0)
            exporters = (
                ExporterStats(
                    first.name, first.exported, first.pending, first.retries,
                    first.dropped + link_dropped,
                ),
                *exporters[1:],
            )  # fmt: skip
        return PipelineStats(
            queued=queued,
            processed=parent.processed,
            dropped_overflow=parent.dropped_overflow + top[0],
            dropped_closed=parent.dropped_closed + top[1],
            build_errors=parent.build_errors + top[2],
            exporters=exporters,
        )

    # -- the links ------------------------------------------------------------------------------

    def _running(self) -> list[_Child]:
        return [c for c in self._slots if c.sock is not None]

    def _split(self, batch: Sequence[AuditEvent]) -> list[tuple[int, int, int]]:
        """``batch`` in contiguous parts ``(child, start, end)``, one per child, none shorter
        than ``_MIN_PART`` events (a small batch goes whole to the next child in turn)."""
        slots = len(self._slots)
        size = len(batch)
        n = min(slots, max(1, size // _MIN_PART))
        if n == 1:
            return [(next(self._turn) % slots, 0, size)]
        return [(i, i * size // n, (i + 1) * size // n) for i in range(n)]

    def _exchange(
        self, kind: int, calls: Sequence[tuple[_Child, bytes]], timeout: float
    ) -> list[bool | None]:
        """Send each child its request, then read every answer: the children work on theirs
        side by side. Each answer's ok flag, or None for a child lost on the way."""
        for child, _ in calls:  # forked before anything is sent (a fork that fails raises)
            if child.sock is None:
                self._spawn(child)
        deadline = time.monotonic() + timeout
        requests: list[int | None] = []
        for child, payload in calls:
            request = next(self._ids)
            sock = child.sock
            try:
                if sock is None:
                    raise EOFError("the delivery process was lost")
                sock.settimeout(timeout)
                sock.sendall(_REQUEST.pack(kind, request, len(payload)))
                sock.sendall(payload)
            except (OSError, EOFError) as exc:
                self._lose_child(child, f"{type(exc).__name__}: {exc}")
                requests.append(None)
            else:
                requests.append(request)
        answers: list[bool | None] = []
        for (child, _), sent in zip(calls, requests, strict=True):
            sock = child.sock
            if sent is None or sock is None:
                answers.append(None)
                continue
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                while True:
                    answer, size = _REPLY.unpack(_read(sock, _REPLY.size))
                    body = _read(sock, size)
                    if answer == sent:  # an earlier request's late answer is skipped
                        break
            except (OSError, EOFError) as exc:
                self._lose_child(child, f"{type(exc).__name__}: {exc}")
                answers.append(None)
                continue
            ok, counters = marshal.loads(body)  # noqa: S302 - from our own child, over a socket pair
            if counters is not None:
                with self._lock:
                    child.counters = counters
            answers.append(bool(ok))
        return answers

    def _spawn(self, child: _Child) -> None:
        """Fork a delivery process for ``child``, connected to this one by a socket pair."""
        if self._before_fork is not None:
            self._before_fork()
        mine, theirs = socket.socketpair()
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns about fork() beside threads:
                warnings.simplefilter("ignore", DeprecationWarning)  # the child runs only this
                pid = os.fork()
        except OSError:
            mine.close()
            theirs.close()
            raise
        if pid == 0:  # the child; the at-fork hooks already forgot the parent's links
            code = 0
            try:
                mine.close()
                _release_inherited(keep=theirs.fileno())
                _serve(theirs, self._make_pipeline)
            except BaseException:
                code = 1
                with contextlib.suppress(BaseException):
                    logger.exception("audit delivery process failed")
            finally:
                os._exit(code)
        theirs.close()
        with self._lock:
            child.sock, child.pid = mine, pid
            child.accepted = 0
            child.counters = None
            self._children += 1
        logger.debug("audit delivery process started: pid %d", pid)

    def _lose_child(self, child: _Child, why: str) -> None:
        """A child died or hung: kill it, count what it had not delivered, forget it."""
        pid = child.pid
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with self._lock:
            undelivered = _undelivered(child)
            self._lost += undelivered
            self._retire(child)
        self._close(child, time.monotonic() + 1.0)
        warn_limited(
            "delivery-process",
            "audit delivery process %d lost (%s); %d audit events it had queued were not "
            "delivered (counted as dropped); the next batch starts a new one",
            pid,
            why,
            undelivered,
        )

    def _retire(self, child: _Child) -> None:
        """Fold a dead child's counters into the totals (hold ``_lock``)."""
        if child.counters is not None:
            _, _, overflow, closed, errors, lanes = child.counters
            top = self._retired_top
            top[0] += overflow
            top[1] += closed
            top[2] += errors
            for name, exported, _, retries, dropped in lanes:
                totals = self._retired.setdefault(name, [0, 0, 0, 0])
                totals[0] += exported
                totals[2] += retries
                totals[3] += dropped
        child.counters = None
        child.accepted = 0

    def _close(self, child: _Child, deadline: float) -> None:
        """Close a child's socket and reap it (waiting until ``deadline`` at most)."""
        sock, pid = child.sock, child.pid
        child.sock, child.pid = None, 0
        if sock is not None:
            sock.close()
        while pid:
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
            break

    def _after_fork(self) -> None:
        # A process forked from this one starts its own delivery processes when it needs them;
        # the sockets to this one's (a sibling's, in a delivery process) must not keep them alive.
        for child in self._slots:
            if child.sock is not None:
                with contextlib.suppress(OSError):
                    child.sock.close()
        self._slots = tuple(_Child() for _ in self._slots)
        self._lock = threading.Lock()
        self._children = self._lost = self._lost_at_flush = 0
        self._retired = {}
        self._retired_top = [0, 0, 0]
        self._partial = None


def _undelivered(child: _Child) -> int:
    """Events ``child`` confirmed and did not report delivered or dropped, for the exporter
    furthest behind (hold the link's ``_lock``)."""
    if child.counters is None:
        return child.accepted
    _, _, overflow, closed, errors, lanes = child.counters
    settled = overflow + closed + errors
    behind = [child.accepted - settled - done - dropped for _, done, _, _, dropped in lanes]
    return max([0, *behind])


def _release_inherited(keep: int) -> None:
    """Point the server's sockets inherited from the parent (listening ones, and connections
    accepted on them) at ``/dev/null``: held open here, a connection would outlive its close
    there (a client waiting for the end of a response) and a port would stay bound. Every other
    descriptor stays as it is: the exporters' files, pipes and sockets are theirs to use here.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing is released
        return
    listening: set[object] = set()
    connections: list[tuple[int, object]] = []
    for name in names:
        fd = int(name)
        if fd == keep:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:  # the directory listing's own descriptor, closed by now
            continue
        try:
            if sock.type != socket.SOCK_STREAM:
                continue
            where = _local_address(sock)
            if where is None:
                continue
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                listening.add(where)
            connections.append((fd, where))
        except OSError:
            continue
        finally:
            sock.detach()
    server = [fd for fd, where in connections if where in listening]
    if not server:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in server:
            os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)


def _local_address(sock: socket.socket) -> object:
    """What a listening socket and the connections accepted on it share: the local port (TCP)
    or path (Unix); None for an unbound socket (a socket pair, a client's Unix socket)."""
    local = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return ("inet", local[1])
    if sock.family == socket.AF_UNIX and local:
        return ("unix", local)
    return None


def _inner(wait: float) -> float:
    """The child's share of a deadline: a little less, so that its answer arrives in time."""
    return max(0.0, min(wait - 0.25, wait * 0.9))


def _read(sock: socket.socket, size: int) -> bytearray:
    """Exactly ``size`` bytes; EOFError if the peer closed first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the other process closed the socket")
        got += n
    return buffer


# -- the child ------------------------------------------------------------------------------------


def _serve(sock: socket.socket, make_pipeline: Callable[[Unpacker], DeliveryPipeline]) -> None:
    """The delivery process: answer requests until told to stop or the parent is gone."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the parent decides when this process stops
    gc.freeze()  # what came with the fork is never collected here: no traversal of it
    # Each frame makes thousands of objects that live until exported: collected at the default
    # threshold (700 allocations), they would be traversed several times over on the way.
    gc.set_threshold(*_GC_THRESHOLDS)
    unpacker = Unpacker()
    pipeline = make_pipeline(unpacker)
    sock.settimeout(None)
    last_counters = 0.0
    while True:
        try:
            kind, request, size = _REQUEST.unpack(_read(sock, _REQUEST.size))
            payload = _read(sock, size)
        except (OSError, EOFError):  # the parent exited or was killed: deliver what is here
            pipeline.shutdown()
            return
        counters: _Counters | None = None
        if kind == _EVENTS:
            # Built, sealed and handed to the exporters' lanes before the answer: the parent
            # waits meanwhile (its own bounded backlog absorbs the load), so nothing piles up
            # here unseen.
            deliver_frame(pipeline, unpacker, payload)
            ok = True
            now = time.monotonic()
            if now - last_counters >= _STATS_EVERY_S:
                counters, last_counters = _counters(pipeline.stats()), now
        else:
            (timeout,) = _SECONDS.unpack(payload)
            ok = pipeline.force_flush(timeout) if kind == _FLUSH else pipeline.shutdown(timeout)
            counters = _counters(pipeline.stats())
        body = marshal.dumps((ok, counters))
        try:
            sock.sendall(_REPLY.pack(request, len(body)) + body)
        except OSError:
            pipeline.shutdown()
            return
        if kind == _SHUTDOWN:
            return


def deliver_frame(
    pipeline: DeliveryPipeline, unpacker: Unpacker, payload: bytes | bytearray
) -> None:
    """Seal and hand a frame's events to ``pipeline``'s lanes: all at once, or one at a time
    (each failure counted as a build error) when a tuple does not make an event."""
    try:
        events = unpacker.events(payload)
    except Exception:
        pipeline.deliver_now(unpacker.frame(payload))
    else:
        pipeline.deliver_built(events)


def _counters(stats: PipelineStats) -> _Counters:
    return (
        stats.queued,
        stats.processed,
        stats.dropped_overflow,
        stats.dropped_closed,
        stats.build_errors,
        tuple((e.name, e.exported, e.pending, e.retries, e.dropped) for e in stats.exporters),
    )


_live: weakref.WeakSet[DeliveryProcess] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for link in list(_live):
        link._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
