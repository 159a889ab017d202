"""Where the audit's cost goes inside a real server: uvicorn variants measured side by side.

A diagnostic for the HTTP ratio of ``benchmarks/overhead.py`` (not a target of its own). Each
variant is the hello-world app of that benchmark served by uvicorn in its own process, loaded
with the same bounded generator; the variants run interleaved, round by round. It prints, per
variant, the median requests/s and the server process's CPU per request (every thread, from
``/proc/<pid>/stat``), and, paired round by round with ``bare``, the throughput ratio (median
and quartiles: this host's rounds spread widely) and the CPU added.

Variants (names can be combined with modifiers, e.g. ``audit-nogc``):

* ``bare``: the app alone; ``audit``: with ``AuditMiddleware`` as in ``overhead.py``;
* ``path``: audit, but the pipeline's ``submit`` is a no-op (the request path only);
* ``glue``: audit, but the request is not handed to the auditor at its end (the protocol
  glue of ``AuditMiddleware`` alone);
* ``wrap``: the bare app behind a middleware that only wraps ``receive`` and ``send`` in
  closures, as the audit's does (what any such layer costs in this server); ``wrap-ctx``:
  that middleware also sets a context variable for the request, as the audit's does;
* ``queued``: audit, events are queued and drained, but nothing is built or exported;
* ``-nogc``: the garbage collector off in the server; ``-gc<n>``: its youngest generation
  collected every ``n`` net allocations instead of 700; ``-sw<ms>``: interpreter switch interval;
* ``-pin``: the server process (all its threads) pinned to one CPU, the load generator free;
* ``-b<n>``: pipeline batch size; ``-noint``: without the integrity chain;
* ``-arch``: an archive exporter (local directory, disk spool) beside the log exporter;
* ``-proc``: process delivery (``AUDIT_LOG_DELIVERY=process``); the CPU column then adds the
  delivery process's CPU to the server's;
* ``-pure``: the pure-Python modules, not the compiled ones (``AUDIT_LOG_PURE_PYTHON=1``);
* ``-lb<n>``: requests built per event-loop turn (``loop_build``; ``-lb0``: all in the
  dispatcher thread, as before it was the default).

It also measures, without a server or threads, the audit's CPU per request split into the
request path and the background work (build, chain, rendering, log export) done on one thread.

Usage: ``python -m benchmarks.server_variants [--rounds N] [variant ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit_middleware._build import PURE_PYTHON_ENV, build_summary
from benchmarks import overhead as ob
from benchmarks._proc import process_cpu_s

DEFAULT_VARIANTS = ("bare", "path", "audit", "audit-lb0")


def serve(variant: str, conn: Connection) -> None:
    """Child process: serve one variant on a free loopback port until terminated."""
    if "-pin" in variant:  # every thread of the server on the first CPU
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ob.INTEGRITY[0] = "-noint" not in variant
    ob.DELIVERY[0] = "process" if "-proc" in variant else "thread"
    if "-arch" in variant:
        ob.ARCHIVE_DIR[:] = [tempfile.mkdtemp(prefix="audit-bench-archive-")]
    v = ob.build_variants(os.devnull)
    auditor = v.auditor
    pipeline = auditor.pipeline
    if match := re.search(r"-b(\d+)", variant):
        pipeline.batch_size = int(match.group(1))
    if match := re.search(r"-lb(\d+)", variant):
        pipeline.loop_build = int(match.group(1))
    if match := re.search(r"-sw(\d+)", variant):
        sys.setswitchinterval(int(match.group(1)) / 1000)
    if variant.startswith("path"):
        pipeline.submit = lambda item: True  # type: ignore[method-assign]
    if variant.startswith("glue"):
        auditor.submit_request = lambda ctx: None  # type: ignore[method-assign]
    if variant.startswith("queued"):
        pipeline._build = lambda item: ()
    if "-nogc" in variant:
        gc.disable()
    if match := re.search(r"-gc(\d+)", variant):
        gc.set_threshold(int(match.group(1)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    conn.send(sock.getsockname()[1])
    app = v.apps["bare" if variant.startswith(("bare", "wrap")) else "audit"]
    if variant.startswith("wrap"):
        app = PassThrough(app, context="-ctx" in variant)
    config = uvicorn.Config(app, host="127.0.0.1", log_level="warning", access_log=False)
    ob._Server(config).run(sockets=[sock])
    if ob.ARCHIVE_DIR:
        auditor.shutdown(timeout=10)
        shutil.rmtree(ob.ARCHIVE_DIR[0], ignore_errors=True)


class PassThrough:
    """The ``wrap`` variant: a pure ASGI middleware that wraps ``receive`` and ``send`` in
    closures, as ``AuditMiddleware`` does, and does nothing else (the cost of the layer)."""

    def __init__(self, app: ASGIApp, context: bool) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped_send(message: Message) -> None:
            await send(message)

        async def wrapped_receive() -> Message:
            return await receive()

        if not self.context:
            await self.app(scope, wrapped_receive, wrapped_send)
            return
        token = _CURRENT.set(scope)
        try:
            await self.app(scope, wrapped_receive, wrapped_send)
        finally:
            _CURRENT.reset(token)


_CURRENT: contextvars.ContextVar[object] = contextvars.ContextVar("wrap_current")


@contextlib.contextmanager
def _pure_python(on: bool) -> Iterator[None]:
    """With ``on``, processes started inside run the pure-Python modules."""
    before = os.environ.get(PURE_PYTHON_ENV)
    if on:
        os.environ[PURE_PYTHON_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PURE_PYTHON_ENV, None)
        else:
            os.environ[PURE_PYTHON_ENV] = before


async def measure(
    variants: Sequence[str], rounds: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Per variant and round: (requests/s, server CPU µs per request)."""
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    ctx = multiprocessing.get_context("spawn")
    for _, order in ob.rotations(tuple(variants), rounds):
        for variant in order:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=serve, args=(variant, child), daemon=True)
            with _pure_python("-pure" in variant):
                process.start()
            try:
                if not parent.poll(60):
                    raise RuntimeError(f"{variant} server did not start")
                port: int = parent.recv()
                await ob.wait_ready(port)
                await ob.load(port, 16, 3000, 1.0)  # warm-up
                assert process.pid is not None
                before = process_cpu_s(process.pid, children=True)
                alone = process_cpu_s(process.pid)
                result = await ob.load(port, 16, 50_000, 3.0)
                used = process_cpu_s(process.pid, children=True) - before
                delivery = used - (process_cpu_s(process.pid) - alone)
                per = 1e6 / max(result.ok, 1)
                results[variant].append((result.rps, used * per, delivery * per))
            finally:
                process.terminate()
                process.join(10)
    return results


async def split_without_threads(rounds: int, n: int) -> tuple[float, float]:
    """Median µs per request over bare: the request path alone, then with the background work
    (build, chain, rendering, log export) done afterwards on the same thread."""
    v = ob.build_variants(os.devnull)
    auditor = v.auditor
    export = auditor.pipeline._lanes[0].exporter.export
    submit = auditor.pipeline.submit
    path_us: list[float] = []
    total_us: list[float] = []
    for _ in range(rounds):
        gc.collect()
        bare = await ob.cpu_ns(v.apps["bare"], n, None)
        captured: list[object] = []
        auditor.pipeline.submit = captured.append  # type: ignore[method-assign, assignment]
        gc.collect()
        start = time.process_time_ns()
        await ob._requests(v.apps["audit"], n)
        path_done = time.process_time_ns()
        pipeline = auditor.pipeline
        for first in range(0, n, 512):  # what the dispatcher and the lane do, on this thread
            chunk = captured[first : first + 512]
            events = [e for item in chunk for e in auditor._build_unsealed(item)]
            batch, _ = pipeline._finish(events, [True] * len(events))
            export(batch)
        end = time.process_time_ns()
        auditor.pipeline.submit = submit  # type: ignore[method-assign]
        path_us.append((path_done - start - bare) / n / 1000)
        total_us.append((end - start - bare) / n / 1000)
    return statistics.median(path_us), statistics.median(total_us)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values`` (both the value itself for one round)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the variants and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("variants", nargs="*", help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    args = parser.parse_args(argv)
    variants = args.variants or list(DEFAULT_VARIANTS)
    if "bare" not in variants:
        variants.insert(0, "bare")
    print(f"load average {os.getloadavg()}; {args.rounds} interleaved rounds")
    print(f"build: {build_summary()}")
    path, total = asyncio.run(split_without_threads(max(args.rounds * 3, 5), 3000))
    print(
        f"without a server or threads, µs per request over bare: request path {path:.1f}, "
        f"with the background work {total:.1f} (background {total - path:.1f})"
    )
    results = asyncio.run(measure(variants, args.rounds))
    bare = results["bare"]
    print(
        f"{'variant':<16}{'req/s':>8}{'÷ bare':>8}{'quartiles':>12}{'server CPU µs/req':>20}"
        f"{'added':>8}{'of it, delivery process':>25}"
    )
    for name in variants:
        rows = results[name]
        # Paired with the bare run of the same round: the host's speed drifts between rounds.
        ratios = [r / b for (r, _, _), (b, _, _) in zip(rows, bare, strict=True)]
        ratio = statistics.median(ratios)
        spread = "-" if name == "bare" else "{:.2f}-{:.2f}".format(*quartiles(ratios))
        added = statistics.median(c - b for (_, c, _), (_, b, _) in zip(rows, bare, strict=True))
        rps = statistics.median(r for r, _, _ in rows)
        cpu = statistics.median(c for _, c, _ in rows)
        child = statistics.median(d for _, _, d in rows)
        shown = "-" if name == "bare" else f"{added:+.0f}"
        of_child = f"{child:.1f}" if "-proc" in name else "-"
        print(f"{name:<16}{rps:>8.0f}{ratio:>8.2f}{spread:>12}{cpu:>20.1f}{shown:>8}{of_child:>25}")
    print("÷ bare and added: medians over rounds of the variant against that round's bare run;")
    print("quartiles: the middle half of those rounds' ratios (the host's noise, round to round)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
