"""Overhead of ``AuditMiddleware`` on a hello-world Starlette app, next to OpenTelemetry's.

Three variants of the same app (``POST /hello`` returning ``hello``) are measured, interleaved
round-robin in one run (the rotation changes every round) and summarised by medians, because
the machine is shared and noisy:

* ``bare``:  the Starlette app alone;
* ``audit``: ``AuditMiddleware`` with 20 realistic rules (one matches ``POST /hello``, so every
  request is audited) and a ``StructlogExporter`` writing to ``/dev/null``;
* ``otel``:  OpenTelemetry's ``OpenTelemetryMiddleware`` with an SDK ``TracerProvider`` and a
  ``BatchSpanProcessor`` feeding a no-op exporter.

Measurements:

A. in-process: the ASGI app awaited directly (no server) in one event loop; wall time per
   request (``perf_counter_ns``). Rounds are shorter than one delivery batch and flushed outside
   the timed region, so this is the request thread's own cost (the worker's is B);
B. CPU per audited event including background work: process CPU time (all threads) of N audited
   requests plus the ``force_flush()`` that builds and exports them, minus that of N bare ones.
   Two ways, interleaved in the same rounds: requests back to back, so the event loop never
   turns and the dispatcher thread builds the events (as for a WSGI app, or a loop too busy to
   turn), and with the loop turning once after each request (``await asyncio.sleep(0)``, bare
   alike), as under an ASGI server, where the events are built on the loop, 64 at a time;
C. over HTTP: one uvicorn server process per variant on loopback, driven by a raw asyncio
   keep-alive HTTP/1.1 client in this process with a fixed concurrency, bounded in requests and
   time per round (client CPU is shown, to tell whether the client was the bottleneck).

Timings are reported against targets (PASS / MISS) but never fail the run; only lost audit
events (dropped, or fewer exported than requests audited) exit non-zero.

Run::

    .venv/bin/python -m benchmarks.overhead            # full run (~1.5 minutes)
    .venv/bin/python -m benchmarks.overhead --quick    # smoke run (~10 seconds)
    .venv/bin/python -m benchmarks.overhead --json results.json --profile --no-http

``--profile`` adds cProfile tables of the audit request path and of the background work (event
build + export); ``--no-http`` skips C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import multiprocessing
import os
import platform
import pstats
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import IO, Any, Final, TypeVar

import uvicorn
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Scope

from audit_middleware import AuditEvent, AuditMiddleware, Auditor, Rule
from audit_middleware._build import build_summary
from audit_middleware.testing import capture_audit_events
from benchmarks._proc import child_pids, process_cpu_s, schedstat_ns
from exporters import StructlogExporter
from exporters.archive import ArchiveExporter

__all__ = ["RULES", "main"]

_T = TypeVar("_T")
VARIANTS: Final = ("bare", "audit", "otel")
QUEUE_SIZE: Final = 1_000_000
TARGET_ADDED_US: Final = 5.0
TARGET_CPU_US: Final = 15.0
#: Whether the audit variant hash-chains its events (the default); ``--no-integrity`` turns it
#: off to show what the chain costs (a list: set once from the command line).
INTEGRITY: list[bool] = [True]
#: The audit variant's delivery (``AUDIT_LOG_DELIVERY``): "thread" or "process".
DELIVERY: list[str] = ["thread"]
#: A directory for an archive exporter (with a spool) beside the log exporter, when given
#: (``server_variants``' ``-arch`` variants; not part of this benchmark's own setup).
ARCHIVE_DIR: list[str] = []
TARGET_HTTP_RATIO: Final = 0.8

#: Twenty rules of a typical B2B SaaS API; ``POST /hello`` is the one every request matches.
RULES: Final = (
    Rule(
        "POST",
        "/auth/login",
        {
            "success": "user.login.succeeded",
            "denied": "user.login.failed",
            "4xx": "user.login.failed",
        },
    ),
    Rule("POST", "/auth/logout", "user.logout"),
    Rule("POST", "/auth/password/reset", "user.password.reset_requested"),
    Rule("POST", "/auth/mfa/enroll", {"2xx": "user.mfa.enrolled", "4xx": "user.mfa.enroll_failed"}),
    Rule(
        "POST",
        "/orgs/{org_id}/api-keys",
        "org.api_key.created",
        target_type="api_key",
        target_id="response.id",
    ),
    Rule(
        "DELETE",
        "/orgs/{org_id}/api-keys/{key_id}",
        "org.api_key.deleted",
        target_type="api_key",
        target_id="path.key_id",
    ),
    Rule("GET", "/orgs/{org_id}/api-keys", "org.api_key.listed"),
    Rule(
        "PATCH",
        "/orgs/{org_id}/settings",
        "org.settings.updated",
        target_type="org",
        target_id="path.org_id",
    ),
    Rule(
        "POST",
        "/orgs/{org_id}/members",
        "org.member.invited",
        target_type="user",
        target_id="response.id",
        metadata={"role": "response.role"},
    ),
    Rule(
        "DELETE",
        "/orgs/{org_id}/members/{user_id}",
        "org.member.removed",
        target_type="user",
        target_id="path.user_id",
    ),
    Rule(
        "PUT",
        "/orgs/{org_id}/members/{user_id}/role",
        "org.member.role_changed",
        target_type="user",
        target_id="path.user_id",
        metadata={"role": "query.role"},
    ),
    Rule("POST", "/orgs/{org_id}/sso/saml", "org.sso.configured"),
    Rule("DELETE", "/orgs/{org_id}/sso/saml", "org.sso.removed"),
    Rule(
        "POST",
        "/orgs/{org_id}/exports",
        "org.data.exported",
        target_type="export",
        target_id="response.id",
    ),
    Rule("GET", "/orgs/{org_id}/audit-log", "org.audit_log.viewed"),
    Rule(
        "POST",
        "/orgs/{org_id}/webhooks",
        "org.webhook.created",
        target_type="webhook",
        target_id="response_header.location",
    ),
    Rule(
        "DELETE",
        "/orgs/{org_id}/webhooks/{webhook_id:uuid}",
        "org.webhook.deleted",
        target_type="webhook",
        target_id="path.webhook_id",
    ),
    Rule(
        "POST",
        "/billing/subscription",
        {"2xx": "billing.subscription.changed", "failure": "billing.subscription.change_failed"},
    ),
    Rule("POST", "/internal/cache/flush", None),
    Rule("POST", "/hello", "hello.said"),
)

_HEADERS: Final = [
    (b"host", b"api.example.com"),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    ),
    (b"accept", b"*/*"),
    (b"content-type", b"application/json"),
    (b"content-length", b"0"),
    (b"x-forwarded-for", b"203.0.113.7, 10.0.0.2"),
    (b"x-request-id", b"req_01J8ZQ4M6Y2V3W7X9K"),
]

#: The prebuilt HTTP scope of ``POST /hello``; each request gets a shallow copy (as from a server).
SCOPE: Final[dict[str, Any]] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/hello",
    "raw_path": b"/hello",
    "root_path": "",
    "query_string": b"",
    "headers": _HEADERS,
    "client": ("10.0.0.2", 51234),
    "server": ("127.0.0.1", 8000),
}

_REQUEST_MESSAGE: Final[Message] = {"type": "http.request", "body": b"", "more_body": False}

#: One raw keep-alive HTTP/1.1 request for the load generator.
HTTP_REQUEST: Final = (
    b"POST /hello HTTP/1.1\r\n"
    b"host: 127.0.0.1\r\n"
    b"user-agent: overhead-bench/1.0\r\n"
    b"content-type: application/json\r\n"
    b"x-forwarded-for: 203.0.113.7\r\n"
    b"content-length: 0\r\n"
    b"\r\n"
)


# -- the app and its variants -------------------------------------------------------------------


async def hello(request: Request) -> PlainTextResponse:
    """The whole application."""
    return PlainTextResponse("hello")


def bare_app() -> Starlette:
    """The hello-world Starlette app."""
    return Starlette(routes=[Route("/hello", hello, methods=["GET", "POST"])])


class NoopSpanExporter(SpanExporter):
    """Accepts every span and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Drop the spans."""
        return SpanExportResult.SUCCESS


@dataclass
class Variants:
    """The three apps, and the objects behind the two middlewares."""

    apps: dict[str, ASGIApp]
    auditor: Auditor
    tracer_provider: TracerProvider


def build_variants(audit_output: str | IO[bytes]) -> Variants:
    """Build ``bare``, ``audit`` and ``otel`` around separate but identical Starlette apps."""
    audit = AuditMiddleware(
        bare_app(),
        rules=RULES,
        exporters=[StructlogExporter(output=audit_output), *_archive()],
        queue_size=QUEUE_SIZE,
        # This process imports OpenTelemetry only for the "otel" variant; the audit variant has
        # no tracer, so trace-id capture (about 0.7 us when on) stays off as in an app without it.
        trace_context="off",
        integrity=INTEGRITY[0],
        delivery=DELIVERY[0],
        environ={},
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopSpanExporter()))
    otel = OpenTelemetryMiddleware(bare_app(), tracer_provider=provider)
    apps: dict[str, ASGIApp] = {"bare": bare_app(), "audit": audit, "otel": otel}
    return Variants(apps, audit.auditor, provider)


def _archive() -> list[ArchiveExporter]:
    if not ARCHIVE_DIR:
        return []
    root = ARCHIVE_DIR[0]
    return [ArchiveExporter(f"{root}/archive", spool_dir=f"{root}/spool")]


# -- in-process measurements (A, B) ---------------------------------------------------------------


async def _receive() -> Message:
    return _REQUEST_MESSAGE


async def _send(message: Message) -> None:
    return None


async def _requests(app: ASGIApp, n: int, turn: bool = False) -> None:
    """``n`` requests through ``app``; with ``turn``, the event loop runs once after each."""
    for _ in range(n):
        scope: Scope = dict(SCOPE)
        await app(scope, _receive, _send)
        if turn:
            await asyncio.sleep(0)


async def timed_ns(app: ASGIApp, n: int) -> int:
    """Wall time of ``n`` requests through ``app``."""
    start = time.perf_counter_ns()
    await _requests(app, n)
    return time.perf_counter_ns() - start


async def cpu_ns(
    app: ASGIApp, n: int, flush: Callable[[], object] | None, turn: bool = False
) -> int:
    """Process CPU time (every thread) of ``n`` requests, plus ``flush()`` when given."""
    start = cpu_now_ns()
    await _requests(app, n, turn)
    if flush is not None:
        flush()
    return cpu_now_ns() - start


def cpu_now_ns() -> int:
    """This process's CPU time (every thread), plus its delivery process's with process
    delivery (its threads' run time from ``/proc``, in ns)."""
    used = time.process_time_ns()
    if DELIVERY[0] == "process":
        for child in child_pids(os.getpid()):
            used += schedstat_ns(child)
    return used


def rotations(names: Sequence[_T], rounds: int) -> Iterator[tuple[int, list[_T]]]:
    """Each round's order: the variants rotated by one more place each round."""
    for r in range(rounds):
        k = r % len(names)
        yield r, [*names[k:], *names[:k]]


@dataclass
class InProcess:
    """Results of measurement A, in µs per request (one value per round)."""

    rounds: int
    requests: int
    per_round_us: dict[str, list[float]]

    def median(self, name: str) -> float:
        """Median µs per request of one variant."""
        return statistics.median(self.per_round_us[name])


async def measure_in_process(v: Variants, rounds: int, n: int) -> tuple[InProcess, int]:
    """A: interleaved wall time per request; returns the results and the requests audited."""
    per_round: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _, order in rotations(VARIANTS, rounds):
        for name in order:
            gc.collect()
            elapsed = await timed_ns(v.apps[name], n)
            per_round[name].append(elapsed / n / 1000)
            v.auditor.force_flush()  # outside the timed region, for every variant alike
            v.tracer_provider.force_flush()
    return InProcess(rounds, n, per_round), rounds * n


@dataclass
class CpuPerEvent:
    """Results of measurement B, in µs of process CPU per audited event (one per round):
    requests back to back (``per_round_us``) and with the event loop turning after each."""

    rounds: int
    requests: int
    per_round_us: list[float]
    per_round_turning_us: list[float]

    @property
    def median(self) -> float:
        """Median µs per event, requests back to back."""
        return statistics.median(self.per_round_us)

    @property
    def median_turning(self) -> float:
        """Median µs per event, the event loop turning after each request."""
        return statistics.median(self.per_round_turning_us)


async def measure_cpu(v: Variants, rounds: int, n: int) -> tuple[CpuPerEvent, int]:
    """B: (CPU of N audited requests + flush) - (CPU of N bare requests), per request, with
    the requests back to back and with the event loop turning after each (interleaved)."""
    per_round: dict[bool, list[float]] = {False: [], True: []}
    pairs = [(name, turn) for turn in (False, True) for name in ("bare", "audit")]
    for _, order in rotations(pairs, rounds):
        cpu: dict[tuple[str, bool], int] = {}
        for name, turn in order:
            gc.collect()
            flush = v.auditor.force_flush if name == "audit" else None
            cpu[name, turn] = await cpu_ns(v.apps[name], n, flush, turn)
        for turn in (False, True):
            per_round[turn].append((cpu["audit", turn] - cpu["bare", turn]) / n / 1000)
    return CpuPerEvent(rounds, n, per_round[False], per_round[True]), 2 * rounds * n


def _top(title: str, profiler: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    out.write(f"{title}\n")
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def profile_audit(v: Variants, n: int, top: int) -> tuple[str, int]:
    """Where the audit cost goes; returns the report and the requests audited on the way.

    cProfile sees only the thread it runs on: first the request path as measured by A, then the
    background work (event build + export) made visible here by ``capture_audit_events()``,
    which builds each event inline (and keeps it from the pipeline) before it is exported.
    """
    app = v.apps["audit"]
    profiler = cProfile.Profile()
    profiler.enable()
    await _requests(app, n)
    profiler.disable()
    v.auditor.force_flush()
    parts = [_top("[1] audit request path (request thread), top by tottime:", profiler, top)]

    exporter = StructlogExporter(output=os.devnull)
    size = v.auditor.config.batch_size

    def export(events: Sequence[AuditEvent]) -> None:
        for i in range(0, len(events), size):
            exporter.export(events[i : i + size])

    bare = await cpu_ns(v.apps["bare"], n, None)
    with capture_audit_events() as events:
        inline = await cpu_ns(app, n, None)
    start = time.process_time_ns()
    export(events)
    exported = time.process_time_ns() - start
    parts.append(
        f"unprofiled split of B, process CPU per event over bare ({n} requests): "
        f"request path + inline build {(inline - bare) / n / 1000:.1f} µs, "
        f"export {exported / n / 1000:.1f} µs\n"
    )

    profiler = cProfile.Profile()
    profiler.enable()
    with capture_audit_events() as events:
        await _requests(app, n)
    export(events)
    profiler.disable()
    exporter.shutdown()
    parts.append(_top("[2] request path + inline build + export, top by tottime:", profiler, top))
    return "\n".join(parts), n


# -- over HTTP (C) --------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """Shuts down gracefully on SIGTERM without re-raising it afterwards, so stats get reported."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop serving (lifespan shutdown flushes the auditor)."""
        self.should_exit = True


def serve(variant: str, conn: Connection, integrity: bool = True, delivery: str = "thread") -> None:
    """Child process: serve one variant on a free loopback port until SIGTERM, then report."""
    INTEGRITY[0] = integrity
    DELIVERY[0] = delivery
    v = build_variants(os.devnull)
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # listener says TCP; with proto 0, Nagle + delayed ACK cap keep-alive at ~25 req/s/conn.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        v.apps[variant], host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    conn.send(port)
    _Server(config).run(sockets=[sock])
    report: dict[str, int] = {}
    if variant == "audit":
        v.auditor.force_flush()
        stats = v.auditor.stats()
        report = {
            "processed": stats.processed,
            "exported": sum(e.exported for e in stats.exporters),
            "dropped": stats.dropped,
        }
    v.tracer_provider.shutdown()
    conn.send(report)
    conn.close()


@dataclass
class ServerProcess:
    """A running server child process."""

    variant: str
    process: multiprocessing.process.BaseProcess
    conn: Connection
    port: int
    served: int = 0


def start_server(variant: str) -> ServerProcess:
    """Spawn the server for ``variant``; returns once it is bound (see :func:`wait_ready`)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=serve,
        args=(variant, child, INTEGRITY[0], DELIVERY[0]),
        name=f"bench-{variant}",
        daemon=True,
    )
    process.start()
    child.close()
    if not parent.poll(60):
        process.kill()
        raise RuntimeError(f"{variant} server did not start")
    port: int = parent.recv()
    return ServerProcess(variant, process, parent, port)


def stop_server(server: ServerProcess, timeout: float = 15.0) -> dict[str, int]:
    """SIGTERM, collect the child's report, join (killing it only if it hangs)."""
    server.process.terminate()
    report: dict[str, int] = {}
    if server.conn.poll(timeout):
        with contextlib.suppress(EOFError):
            report = server.conn.recv()
    server.process.join(timeout)
    if server.process.is_alive():
        server.process.kill()
        server.process.join()
    server.conn.close()
    return report


async def _one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(HTTP_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def wait_ready(port: int, timeout: float = 30.0) -> None:
    """Poll until the server answers one request."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        try:
            await _one_request(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()
        return


@dataclass
class LoadResult:
    """One load round against one server."""

    ok: int
    errors: int
    seconds: float
    client_cpu: float  # share of one core the load generator used

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.seconds


async def load(port: int, concurrency: int, max_requests: int, max_seconds: float) -> LoadResult:
    """Keep-alive POSTs from ``concurrency`` connections until either bound is reached."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    remaining = max_requests
    ok = errors = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + max_seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal remaining, ok, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            if await _one_request(reader, writer) == 200:
                ok += 1
            else:
                errors += 1

    await asyncio.gather(*(worker(r, w) for r, w in conns))
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    for _, writer in conns:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return LoadResult(ok, errors, seconds, cpu / seconds)


@dataclass
class Http:
    """Results of measurement C."""

    rounds: int
    concurrency: int
    max_requests: int
    max_seconds: float
    per_round_rps: dict[str, list[float]]
    client_cpu: dict[str, list[float]]
    server_cpu_us: dict[str, list[float]]  # server process CPU (all threads) per request
    errors: int
    audit_server: dict[str, int]
    audit_served: int

    def median(self, name: str) -> float:
        """Median requests per second of one variant."""
        return statistics.median(self.per_round_rps[name])


async def measure_http(
    rounds: int, concurrency: int, max_requests: int, max_seconds: float, warmup_s: float
) -> Http:
    """C: one uvicorn process per variant; interleaved bounded load rounds from this process."""
    servers = {name: start_server(name) for name in VARIANTS}
    rps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    client_cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    server_cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    errors = 0
    report: dict[str, int] = {}
    try:
        for server in servers.values():
            await wait_ready(server.port)
            server.served += 1
            warm = await load(server.port, concurrency, max_requests, warmup_s)
            server.served += warm.ok
        for _, order in rotations(VARIANTS, rounds):
            for name in order:
                server = servers[name]
                pid = server.process.pid
                assert pid is not None  # started
                before = process_cpu_s(pid, children=True)
                result = await load(server.port, concurrency, max_requests, max_seconds)
                used = process_cpu_s(pid, children=True) - before
                if result.ok:
                    server_cpu[name].append(used / result.ok * 1e6)
                server.served += result.ok
                errors += result.errors
                rps[name].append(result.rps)
                client_cpu[name].append(result.client_cpu)
    finally:
        for name, server in servers.items():
            got = stop_server(server)
            if name == "audit":
                report = got
    return Http(
        rounds,
        concurrency,
        max_requests,
        max_seconds,
        rps,
        client_cpu,
        server_cpu,
        errors,
        report,
        servers["audit"].served,
    )


# -- reporting ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    """PASS or MISS (a missed timing target never fails the run)."""
    return "PASS" if ok else "MISS"


def print_in_process(a: InProcess) -> None:
    """Table of measurement A."""
    bare = a.median("bare")
    print(f"in-process (µs/request, median of {a.rounds} rounds x {a.requests} requests)")
    print(f"{'variant':<9}{'µs/req':>9}{'added µs':>11}{'ratio':>8}   spread (min-max)")
    for name in VARIANTS:
        med = a.median(name)
        spread = f"{min(a.per_round_us[name]):.1f}-{max(a.per_round_us[name]):.1f}"
        added = "-" if name == "bare" else f"{med - bare:+.1f}"
        note = ""
        if name == "audit":
            passed = verdict(med - bare <= TARGET_ADDED_US)
            note = f"   target ≤ {TARGET_ADDED_US:g} µs added: {passed}"
        print(f"{name:<9}{med:>9.1f}{added:>11}{med / bare:>8.2f}   {spread:<18}{note}".rstrip())


def print_cpu(b: CpuPerEvent) -> None:
    """Lines of measurement B."""
    print(
        f"CPU per audited event incl. background (median of {b.rounds} rounds x {b.requests}; "
        f"target ≤ {TARGET_CPU_US:g} µs)"
    )
    for label, values, med in (
        ("requests back to back (dispatcher thread builds)", b.per_round_us, b.median),
        ("event loop turning after each (loop builds)", b.per_round_turning_us, b.median_turning),
    ):
        spread = f"spread {min(values):.1f}-{max(values):.1f}"
        print(f"  {label:<50}{med:>6.1f} µs  ({spread}): {verdict(med <= TARGET_CPU_US)}")


def print_http(c: Http) -> None:
    """Table of measurement C."""
    bare = c.median("bare")
    print(
        f"HTTP (uvicorn h11, loopback, concurrency {c.concurrency}, median of {c.rounds} rounds, "
        f"each ≤ {c.max_requests} requests / ≤ {c.max_seconds:g} s)"
    )
    print(f"{'variant':<9}{'req/s':>8}{'ratio':>8}{'client CPU':>12}{'server CPU/req':>16}")
    bare_server = statistics.median(c.server_cpu_us["bare"] or [0.0])
    for name in VARIANTS:
        med = c.median(name)
        cpu = statistics.median(c.client_cpu[name])
        server = statistics.median(c.server_cpu_us[name] or [0.0])
        added = "" if name == "bare" else f" ({server - bare_server:+.0f})"
        note = ""
        if name == "audit":
            note = f"   target ≥ {TARGET_HTTP_RATIO:g}: {verdict(med / bare >= TARGET_HTTP_RATIO)}"
        column = f"{server:.0f} µs{added}"
        print(f"{name:<9}{med:>8.0f}{med / bare:>8.2f}{cpu:>11.0%}{column:>16}{note}")
    print(
        "  server CPU/req: the server process's CPU (every thread) per request served, "
        "and the added cost over bare"
    )
    if c.errors:
        print(f"  non-200 responses: {c.errors}")
    busiest = max(statistics.median(x) for x in c.client_cpu.values())
    if busiest > 0.9:
        print("  note: the load generator used ~a full core; req/s may be client-bound")


def machine() -> dict[str, Any]:
    """The context the numbers were taken in."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def check_audit(auditor: Auditor, audited: int) -> tuple[str, list[str]]:
    """Correctness: every audited in-process request was built and exported, none dropped."""
    auditor.force_flush()
    stats = auditor.stats()
    exported = sum(e.exported for e in stats.exporters)
    summary = (
        f"in-process audit pipeline: {audited} requests audited, processed {stats.processed}, "
        f"exported {exported}, dropped {stats.dropped}"
    )
    problems = []
    if stats.dropped:
        problems.append(f"in-process: {stats.dropped} audit events dropped")
    if stats.processed != audited or exported != audited:
        problems.append(
            f"in-process: {audited} audited but {stats.processed} processed, {exported} exported"
        )
    return summary, problems


def check_http(c: Http) -> tuple[str, list[str]]:
    """Correctness of the audited server: every request it served was exported."""
    rep = c.audit_server
    if not rep:
        return "HTTP audit server: no report", ["HTTP: the audited server reported no stats"]
    summary = (
        f"HTTP audit server: {c.audit_served} requests served, processed {rep['processed']}, "
        f"exported {rep['exported']}, dropped {rep['dropped']}"
    )
    problems = []
    if rep["dropped"]:
        problems.append(f"HTTP: {rep['dropped']} audit events dropped")
    if rep["exported"] != c.audit_served:
        problems.append(f"HTTP: {c.audit_served} served but {rep['exported']} exported")
    return summary, problems


# -- main -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much of everything to run."""

    warmup: int
    a_rounds: int
    a_requests: int
    b_rounds: int
    b_requests: int
    c_rounds: int
    c_requests: int
    c_seconds: float
    c_warmup_s: float
    concurrency: int


# A's rounds stay below the default batch size (512): the worker then never wakes by size in a
# timed region, so A is the request thread's own cost; the worker's CPU is what B measures.
FULL: Final = Plan(2000, 61, 500, 30, 3000, 7, 50_000, 3.0, 1.0, 16)
QUICK: Final = Plan(300, 7, 300, 5, 1000, 2, 5_000, 1.0, 0.3, 16)


async def run_in_process(
    plan: Plan, profile: bool
) -> tuple[InProcess, CpuPerEvent, str | None, list[str], list[str]]:
    """A and B (and the optional profile) in one event loop, then the correctness check."""
    with open(os.devnull, "wb") as devnull:
        v = build_variants(devnull)
        audited = 0
        for name in VARIANTS:
            await _requests(v.apps[name], plan.warmup)
        audited += plan.warmup
        v.auditor.force_flush()
        assert plan.a_requests < v.auditor.config.batch_size, "see the comment on FULL"
        a, n = await measure_in_process(v, plan.a_rounds, plan.a_requests)
        audited += n
        b, n = await measure_cpu(v, plan.b_rounds, plan.b_requests)
        audited += n
        prof = None
        if profile:
            prof, n = await profile_audit(v, 5000 if plan is FULL else 1000, 25)
            audited += n
        summary, problems = check_audit(v.auditor, audited)
        v.auditor.shutdown()
        v.tracer_provider.shutdown()
    return a, b, prof, [summary], problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 only if audit events were lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="print a cProfile of the audit request path"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the uvicorn measurement")
    parser.add_argument(
        "--no-integrity",
        action="store_true",
        help="audit without the hash chain (AUDIT_LOG_INTEGRITY=false)",
    )
    parser.add_argument(
        "--delivery",
        choices=("thread", "process"),
        default="thread",
        help="the audit's delivery (AUDIT_LOG_DELIVERY); with process, the CPU figures add "
        "the delivery process's",
    )
    args = parser.parse_args(argv)
    INTEGRITY[0] = not args.no_integrity
    DELIVERY[0] = args.delivery
    plan = QUICK if args.quick else FULL

    ctx = machine()
    print(
        f"Python {ctx['python']} ({ctx['implementation']}) on {ctx['platform']}, "
        f"{ctx['cpu_count']} CPUs, load average {ctx['load_average']}"
    )
    print(
        f"mode: {'quick' if args.quick else 'full'}; variants interleaved round-robin; "
        f"integrity chain {'on' if INTEGRITY[0] else 'off'}; {DELIVERY[0]} delivery\n"
        f"build: {build_summary()}\n"
    )

    started = time.monotonic()
    a, b, prof, summaries, problems = asyncio.run(run_in_process(plan, args.profile))
    print_in_process(a)
    print()
    print_cpu(b)
    print()
    c = None
    if not args.no_http:
        c = asyncio.run(
            measure_http(
                plan.c_rounds, plan.concurrency, plan.c_requests, plan.c_seconds, plan.c_warmup_s
            )
        )
        print_http(c)
        summary, more = check_http(c)
        summaries.append(summary)
        problems += more
        print()
    print("\n".join(summaries))
    print()
    if prof is not None:
        print(prof)
    print(f"total time: {time.monotonic() - started:.0f} s")

    if args.json:
        bare = a.median("bare")
        result: dict[str, Any] = {
            "machine": ctx,
            "mode": "quick" if args.quick else "full",
            "in_process": {
                "rounds": a.rounds,
                "requests_per_round": a.requests,
                "variants": {
                    name: {
                        "median_us": a.median(name),
                        "added_us": a.median(name) - bare,
                        "ratio": a.median(name) / bare,
                        "per_round_us": a.per_round_us[name],
                    }
                    for name in VARIANTS
                },
                "target_added_us": TARGET_ADDED_US,
            },
            "cpu_per_event": {
                "rounds": b.rounds,
                "requests_per_round": b.requests,
                "median_us": b.median,
                "per_round_us": b.per_round_us,
                "median_us_loop_turning": b.median_turning,
                "per_round_us_loop_turning": b.per_round_turning_us,
                "target_us": TARGET_CPU_US,
            },
            "problems": problems,
        }
        if c is not None:
            http_bare = c.median("bare")
            result["http"] = {
                "rounds": c.rounds,
                "concurrency": c.concurrency,
                "max_requests": c.max_requests,
                "max_seconds": c.max_seconds,
                "errors": c.errors,
                "audit_server": c.audit_server,
                "audit_served": c.audit_served,
                "variants": {
                    name: {
                        "median_rps": c.median(name),
                        "ratio": c.median(name) / http_bare,
                        "per_round_rps": c.per_round_rps[name],
                        "client_cpu": c.client_cpu[name],
                        "server_cpu_us_per_request": c.server_cpu_us[name],
                    }
                    for name in VARIANTS
                },
                "target_ratio": TARGET_HTTP_RATIO,
            }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")

    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
