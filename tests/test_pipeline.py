"""The delivery pipeline: batching, retries, overflow, hung exporters, flush, shutdown, fork."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from audit_middleware import Actor, AuditEvent, Auditor, ExportResult, Target, record
from audit_middleware._pipeline import DeliveryPipeline
from audit_middleware.testing import capture_audit_events
from exporters import InMemoryExporter
from tests.conftest import MemoryAuditor, eventually

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HangingExporter:
    """Blocks in export until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        self.entered.set()
        self.release.wait(30)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        self.release.set()


class RaisingExporter(InMemoryExporter):
    """Raises on the first ``n`` exports."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.raises = n

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        if self.raises:
            self.raises -= 1
            raise ConnectionError("collector down")
        return super().export(batch)


class GateExporter(InMemoryExporter):
    """Blocks every export until ``open`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.entered = threading.Event()

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        self.entered.set()
        self.open.wait(30)
        return super().export(batch)


def _built(n: int) -> list[AuditEvent]:
    with capture_audit_events() as events:
        auditor = Auditor(exporters=[], environ={})
        for i in range(n):
            auditor.record("doc.updated", target=Target("doc", str(i)), org_id="org_1")
        auditor.shutdown(timeout=2.0)
    return list(events)


def _paced(
    exporter: InMemoryExporter, pace: int, loop_build: int = 0, retries: int = 0
) -> DeliveryPipeline:
    """A pipeline of prebuilt events in batches of 10, paced to ``pace`` events."""
    return DeliveryPipeline(
        [exporter],
        lambda item: (item,),  # type: ignore[arg-type,return-value]
        queue_size=10_000,
        overflow="drop_newest",
        batch_size=10,
        batch_interval=0.01,
        export_retries=retries,
        shutdown_timeout=5.0,
        loop_build=loop_build,
        pace=pace,
    )


def _record_n(auditor: Auditor, n: int) -> None:
    for i in range(n):
        auditor.record("test.event", metadata={"i": i})


def test_batches_by_size_and_keeps_order(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(batch_size=10, batch_interval=5)
    _record_n(auditor, 25)
    events = auditor.wait_for(25)
    assert [e.metadata["i"] for e in events] == list(range(25))
    assert auditor.memory.export_calls >= 3


def test_batch_interval_delivers_without_flush(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(batch_size=1000, batch_interval=0.05)
    _record_n(auditor, 3)
    deadline = time.monotonic() + 5
    while len(auditor.memory.events) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(auditor.memory.events) == 3


def test_failed_exports_are_retried(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(export_retries=5)
    auditor.memory.fail_next(2)
    _record_n(auditor, 4)
    assert auditor.force_flush(timeout=10)
    assert len(auditor.memory.events) == 4
    stats = auditor.stats()
    assert stats.exporters[0].retries == 8  # two failed attempts of a 4-event batch
    assert stats.dropped == 0


def test_raising_exporter_is_retried(make_auditor: Callable[..., MemoryAuditor]) -> None:
    raising = RaisingExporter(1)
    auditor = make_auditor(exporters=[raising])
    _record_n(auditor, 2)
    assert auditor.force_flush(timeout=10)
    assert len(raising.events) == 2


def test_exhausted_retries_are_counted_and_reported(
    make_auditor: Callable[..., MemoryAuditor], caplog: pytest.LogCaptureFixture
) -> None:
    auditor = make_auditor(export_retries=1)
    auditor.memory.fail_next(100)
    _record_n(auditor, 3)
    assert auditor.force_flush(timeout=10) is False
    stats = auditor.stats()
    assert stats.exporters[0].dropped == 3
    assert stats.dropped == 3
    assert "dropped a batch of 3 audit events" in caplog.text


def test_hung_exporter_does_not_block_other_exporters_or_the_caller(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    hanging = HangingExporter()
    memory = InMemoryExporter()
    auditor = make_auditor(exporters=[hanging, memory], queue_size=100, batch_size=5)
    _record_n(auditor, 5)
    assert hanging.entered.wait(5)
    for sent in range(25, 225, 20):  # the hung lane's backlog (100) overflows: counted
        started = time.perf_counter()
        _record_n(auditor, 20)
        assert time.perf_counter() - started < 2  # the caller is never held up by the hang
        deadline = time.monotonic() + 5
        while len(memory.events) < sent and time.monotonic() < deadline:
            time.sleep(0.005)
    assert len(memory.events) == 205
    assert auditor.force_flush(timeout=0.3) is False  # the honest answer: not all delivered
    stats = auditor.stats()
    hung = stats.exporters[0]
    assert hung.dropped > 0
    assert hung.dropped + hung.pending + hung.exported == 205
    hanging.release.set()


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        pytest.param("drop_newest", list(range(10)), id="drop_newest"),
        pytest.param("drop_oldest", list(range(5, 15)), id="drop_oldest"),
    ],
)
def test_full_queue_applies_the_named_policy_and_counts(
    make_auditor: Callable[..., MemoryAuditor], policy: str, kept: list[int]
) -> None:
    auditor = make_auditor(queue_size=10, overflow=policy, batch_size=1000, batch_interval=60)
    auditor.pipeline._started = True  # hold the worker back so the queue fills
    _record_n(auditor, 15)
    assert auditor.stats().dropped_overflow == 5
    auditor.pipeline._started = False
    assert auditor.force_flush(timeout=5)
    assert [e.metadata["i"] for e in auditor.memory.events] == kept
    assert auditor.stats().dropped == 5


def test_shutdown_honours_its_timeout_with_a_hung_exporter(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    hanging = HangingExporter()
    auditor = make_auditor(exporters=[hanging])
    _record_n(auditor, 1)
    assert hanging.entered.wait(5)
    started = time.perf_counter()
    assert auditor.shutdown(timeout=0.2) is False
    assert time.perf_counter() - started < 3.0  # the timeout, not the exporter's 30 s hang
    hanging.release.set()


def test_events_after_shutdown_are_counted(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor()
    assert auditor.shutdown(timeout=2)
    _record_n(auditor, 2)
    assert auditor.stats().dropped_closed == 2
    assert auditor.memory.shut_down


def test_flush_at_interpreter_exit(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "audit.jsonl")
    script = (
        "from audit_middleware import Auditor\n"
        f"a = Auditor(log_output={out!r}, batch_interval=60, environ={{}})\n"
        "for i in range(100): a.record('test.event', metadata={'i': i})\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    with open(out, "rb") as f:
        lines = [orjson.loads(line) for line in f]
    assert [line["metadata"]["i"] for line in lines] == list(range(100))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_child_delivers_its_own_events(tmp_path: os.PathLike[str]) -> None:
    out = os.path.join(tmp_path, "audit.jsonl")
    script = (
        "import os\n"
        "from audit_middleware import Auditor\n"
        f"a = Auditor(log_output={out!r}, batch_interval=0.05, environ={{}})\n"
        "a.record('parent.before_fork')\n"
        "assert a.force_flush(5)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    a.record('child.event')\n"
        "    ok = a.force_flush(5)\n"
        "    os._exit(0 if ok else 3)\n"
        "a.record('parent.after_fork')\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert os.waitstatus_to_exitcode(status) == 0, status\n"
        "assert a.shutdown(5)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
    with open(out, "rb") as f:
        actions = sorted(orjson.loads(line)["action"] for line in f)
    assert actions == ["child.event", "parent.after_fork", "parent.before_fork"]


def test_module_level_record_outside_a_request_uses_the_default_auditor(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor()
    record("billing.invoice.paid", org_id="org_1", metadata={"amount_cents": 1200})
    (event,) = auditor.wait_for(1)
    assert event.action == "billing.invoice.paid"
    assert event.org_id == "org_1"
    assert event.actor.type == "anonymous"
    assert event.request is None


@pytest.mark.parametrize(
    "bad", ["Login", "user", "user..login", "user.login!", "a." + "b" * 200], ids=str
)
def test_record_rejects_malformed_actions(
    make_auditor: Callable[..., MemoryAuditor], bad: str
) -> None:
    auditor = make_auditor()
    with pytest.raises(ValueError, match="invalid action"):
        auditor.record(bad)


class _BatchRecorder:
    """Blocks its first export until released; records the size of every batch it gets."""

    def __init__(self, merges: bool) -> None:
        self.merges_batches = merges
        self.writes_lines = True
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.ids: list[str] = []

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        from audit_middleware import batch_lines

        if not self.sizes:
            self.entered.set()
            self.release.wait(30)
        lines = batch_lines(batch)
        assert [orjson.loads(line)["id"] for line in lines] == [e.id for e in batch]
        self.sizes.append(len(batch))
        self.ids += [e.id for e in batch]
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        self.release.set()


@pytest.mark.parametrize("merges", [True, False])
def test_batches_waiting_behind_a_slow_export_merge_only_when_the_exporter_allows(
    merges: bool,
) -> None:
    exporter = _BatchRecorder(merges)
    auditor = Auditor(exporters=[exporter], batch_size=10, queue_size=1000, environ={})
    _record_n(auditor, 10)  # the first batch, held in export
    assert exporter.entered.wait(10)
    _record_n(auditor, 95)  # more batches queue up behind it, in the lane
    deadline = time.monotonic() + 10
    while auditor.stats().exporters[0].pending < 105 and time.monotonic() < deadline:
        time.sleep(0.01)
    exporter.release.set()
    assert auditor.force_flush(10)
    stats = auditor.stats()
    auditor.shutdown(5)
    assert stats.exporters[0].exported == 105
    assert stats.exporters[0].pending == 0
    assert len(exporter.ids) == len(set(exporter.ids)) == 105
    if merges:  # everything that waited went out in one export
        assert len(exporter.sizes) == 2
    else:
        assert max(exporter.sizes) == 10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": "doc:d_1"}, "target must be a Target"),
        ({"target": ("doc", "d_1")}, "target must be a Target"),
        ({"actor": {"id": "u_1"}}, "actor must be an Actor"),
    ],
)
def test_record_rejects_a_target_or_actor_of_the_wrong_type(
    make_auditor: Callable[..., MemoryAuditor], options: dict[str, object], message: str
) -> None:
    """Raised in the caller, rather than an event lost later in the pipeline."""
    auditor = make_auditor()
    with pytest.raises(TypeError, match=message):
        auditor.record("doc.updated", **options)  # type: ignore[arg-type]
    assert auditor.force_flush(timeout=5)
    assert auditor.stats().build_errors == 0


def test_queued_records_drop_out_of_the_garbage_collectors_lists(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    auditor = make_auditor(batch_size=1000, batch_interval=60.0)  # nothing is built meanwhile
    for i in range(50):
        auditor.record(
            "doc.updated",
            actor=Actor("u_1", email="ada@example.com"),
            target=Target("doc", str(i)),
            org_id="org_1",
            metadata={"field": "title", "revision": i, "tags": ["a"]} if i == 7 else {"n": i},
        )
    queued = list(auditor.pipeline._queue)
    assert len(queued) == 50
    gc.collect()  # the tuples inside each record first
    gc.collect()  # then the record
    tracked = [i for i, item in enumerate(queued) if gc.is_tracked(item)]
    assert tracked == [7]  # a list in its metadata: that one stays in them
    events = auditor.wait_for(50)
    assert [e.target for e in events] == [Target("doc", str(i)) for i in range(50)]
    assert {e.actor for e in events} == {Actor("u_1", email="ada@example.com")}
    assert events[7].metadata == {"field": "title", "revision": 7, "tags": ["a"]}
    assert events[8].metadata == {"n": 8}


def test_a_paced_dispatcher_builds_no_further_ahead_of_its_lane_than_the_pace() -> None:
    events = _built(200)
    gate = GateExporter()
    pipeline = _paced(gate, pace=30)
    for event in events:
        assert pipeline.submit(event)
    assert gate.entered.wait(5)
    assert eventually(lambda: pipeline.stats().exporters[0].pending >= 30)
    time.sleep(0.1)  # room to build further, were it not held back
    stats = pipeline.stats()
    assert stats.exporters[0].pending <= 30 + 10  # the pace, plus the chunk that crossed it
    assert stats.queued >= 200 - 40
    gate.open.set()
    assert pipeline.force_flush(timeout=5.0)
    assert [e.id for e in gate.events] == [e.id for e in events]  # in order, every one
    assert pipeline.shutdown(timeout=5.0)


def test_a_paced_event_loop_turn_never_waits_for_the_lane() -> None:
    events = _built(200)
    gate = GateExporter()
    pipeline = _paced(gate, pace=20, loop_build=5)

    async def submit_all() -> None:
        for event in events:
            pipeline.submit(event)
            await asyncio.sleep(0)  # the loop turns: queued events are built on it

    with ThreadPoolExecutor(1) as pool:  # the loop runs while the lane is blocked
        pool.submit(asyncio.run, submit_all()).result(timeout=10)
    assert gate.open.is_set() is False
    assert pipeline.stats().exporters[0].pending <= 20 + 10
    gate.open.set()
    assert pipeline.force_flush(timeout=5.0)
    assert [e.id for e in gate.events] == [e.id for e in events]
    assert pipeline.shutdown(timeout=5.0)


class FailingExporter(InMemoryExporter):
    """Every export fails; records whether it was shut down."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        return ExportResult.FAILURE

    def shutdown(self, timeout: float | None = None) -> None:
        self.stopped.set()


def test_shutdown_reaches_a_paced_lane_that_is_retrying_and_counts_every_event() -> None:
    events = _built(100)
    failing = FailingExporter()
    # backoff of seconds between attempts: only shutdown cuts it short
    pipeline = _paced(failing, pace=20, retries=50)
    for event in events:
        pipeline.submit(event)
    assert eventually(lambda: pipeline.stats().exporters[0].retries > 0)
    assert pipeline.shutdown(timeout=1.0) is False
    assert failing.stopped.wait(5)  # the stop request got past the pace to the lane
    stats = pipeline.stats()
    assert stats.queued == 0
    assert stats.dropped == 100  # every event counted
