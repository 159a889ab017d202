"""Building events on the event loop (``loop_build``): where the work runs, and that nothing is
lost, duplicated or reordered when the loop and the dispatcher thread take turns."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from audit_middleware import AuditConfigError, AuditEvent, AuditMiddleware, Auditor
from tests.conftest import MemoryAuditor, serve


def _watch_builds(auditor: Auditor) -> list[str]:
    """Record the name of the thread that builds each queued item."""
    threads: list[str] = []
    pipeline = auditor.pipeline
    build = pipeline._build

    def watched(item: object) -> Sequence[AuditEvent]:
        threads.append(threading.current_thread().name)
        return build(item)

    pipeline._build = watched
    return threads


def _assert_chain_unbroken(events: Sequence[AuditEvent]) -> None:
    seqs = [event.integrity["seq"] for event in events if event.integrity is not None]
    assert len(seqs) == len(events)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _assert_delivered_in_order(auditor: MemoryAuditor, expected: list[int]) -> None:
    """Every expected event arrived, in order, with an unbroken chain."""
    events = auditor.wait_for(len(expected))
    assert [e.metadata["i"] for e in events] == expected
    _assert_chain_unbroken(events)


def _record(auditor: Auditor, first: int, n: int) -> None:
    for i in range(first, first + n):
        auditor.record("test.event", metadata={"i": i})


async def _record_turn_by_turn(auditor: Auditor, first: int, n: int) -> None:
    """Record events ``first`` to ``first + n - 1`` with a loop turn after each, as between
    requests."""
    for i in range(first, first + n):
        _record(auditor, i, 1)
        await asyncio.sleep(0)


def test_on_an_event_loop_the_loop_builds_in_chunks(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(loop_build=8, batch_size=512, batch_interval=60)
    threads = _watch_builds(auditor)

    asyncio.run(_record_turn_by_turn(auditor, 0, 20))
    assert threads[:16] == ["MainThread"] * 16  # two chunks of 8, on the loop's thread
    assert len(threads) == 16  # the last 4 are below a chunk: they wait for the dispatcher
    _assert_delivered_in_order(auditor, list(range(20)))
    assert threads[16:] == ["audit-dispatcher"] * 4


def test_loop_build_zero_builds_only_in_the_dispatcher(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(loop_build=0, batch_size=512, batch_interval=60)
    threads = _watch_builds(auditor)

    asyncio.run(_record_turn_by_turn(auditor, 0, 40))
    assert threads == []
    _assert_delivered_in_order(auditor, list(range(40)))
    assert set(threads) == {"audit-dispatcher"}


def test_built_events_waiting_for_a_full_batch_are_counted_and_flushed_in_order(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(loop_build=4, batch_size=512, batch_interval=60)

    async def main() -> None:
        await _record_turn_by_turn(auditor, 0, 10)
        # 8 built on the loop (pending, below a batch), 2 still queued: all count as queued
        assert auditor.stats().queued == 10
        assert auditor.memory.events == []
        # A flush from another thread while the loop keeps recording.
        flushed = asyncio.get_running_loop().run_in_executor(None, auditor.force_flush, 10)
        await _record_turn_by_turn(auditor, 10, 20)
        assert await flushed

    asyncio.run(main())
    _assert_delivered_in_order(auditor, list(range(30)))
    assert auditor.stats().queued == 0
    assert auditor.stats().dropped == 0


def test_a_loop_that_closes_with_a_build_scheduled_loses_nothing(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(loop_build=4, batch_size=512, batch_interval=0.02)
    threads = _watch_builds(auditor)

    loop = asyncio.new_event_loop()

    def submit_and_stop() -> None:
        loop.stop()  # this is the loop's last turn: the build it schedules never runs
        _record(auditor, 0, 6)

    loop.call_soon(submit_and_stop)
    loop.run_forever()
    loop.close()
    _assert_delivered_in_order(auditor, list(range(6)))  # the dispatcher builds them
    assert set(threads) == {"audit-dispatcher"}
    threads.clear()

    asyncio.run(_record_turn_by_turn(auditor, 6, 8))  # a later loop gets its builds again
    assert threads == ["MainThread"] * 8
    _assert_delivered_in_order(auditor, list(range(14)))


def test_a_build_that_raises_on_the_loop_is_counted_and_the_rest_delivered(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(loop_build=4, batch_size=512, batch_interval=60)
    pipeline = auditor.pipeline
    build = pipeline._build

    def flaky(item: object) -> Sequence[AuditEvent]:
        events = build(item)
        if events and events[0].metadata.get("i") == 5:
            raise RuntimeError("bad item")
        return events

    pipeline._build = flaky

    asyncio.run(_record_turn_by_turn(auditor, 0, 12))
    _assert_delivered_in_order(auditor, [i for i in range(12) if i != 5])
    assert auditor.stats().build_errors == 1


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def test_under_uvicorn_every_request_is_audited_once_and_chained(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    app = Starlette(routes=[Route("/hello", _hello, methods=["POST"])])
    auditor = make_auditor(loop_build=8, batch_size=64, batch_interval=60)
    threads = _watch_builds(auditor)
    n = 300

    async def load(url: str) -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.post("/hello", headers={"x-request-id": f"r{i}"}) for i in range(n))
            )
        assert {r.status_code for r in responses} == {200}

    with serve(AuditMiddleware(app, auditor=auditor)) as url:
        asyncio.run(load(url))
        events = auditor.wait_for(n)
    assert sorted(e.request.id for e in events if e.request) == sorted(f"r{i}" for i in range(n))
    assert len(events) == n
    _assert_chain_unbroken(events)
    # The server's event loop runs in the serving thread: it built the events in chunks.
    loop_built = [name for name in threads if name != "audit-dispatcher"]
    assert len(loop_built) >= n // 2
    assert auditor.stats().dropped == 0


def test_loop_build_is_configured_from_the_environment() -> None:
    auditor = Auditor(exporters=[], environ={"AUDIT_LOG_LOOP_BUILD": "32"})
    assert auditor.pipeline.loop_build == 32
    assert Auditor(exporters=[], environ={}).pipeline.loop_build == 64
    keyword = Auditor(exporters=[], loop_build=0, environ={"AUDIT_LOG_LOOP_BUILD": "32"})
    assert keyword.pipeline.loop_build == 0
    with pytest.raises(AuditConfigError, match="AUDIT_LOG_LOOP_BUILD"):
        Auditor(exporters=[], environ={"AUDIT_LOG_LOOP_BUILD": "-1"})
