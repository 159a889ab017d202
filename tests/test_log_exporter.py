"""The structlog exporter: one JSON line per event, to a stream or the app's own logger."""

from __future__ import annotations

import io
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from audit_middleware import ExportResult
from exporters import StructlogExporter
from tests.conftest import MemoryAuditor, assert_valid


def _events(make_auditor: Callable[..., MemoryAuditor], n: int) -> list[Any]:
    auditor = make_auditor()
    for i in range(n):
        auditor.record("org.settings.updated", org_id="o1", metadata={"i": i, "note": "a\nb"})
    return auditor.wait_for(n)


def test_one_json_line_per_event_matching_the_schema(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    events = _events(make_auditor, 3)
    out = io.BytesIO()
    exporter = StructlogExporter(output=out)
    assert exporter.export(events) is ExportResult.SUCCESS
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    for line, event in zip(lines, events, strict=True):
        data = orjson.loads(line)
        assert data.pop("event") == event.action
        assert data.pop("level") == "info"
        assert data.pop("logger") == "audit"
        assert data == event.to_dict()
        assert_valid(event)


def test_to_a_file_path_appends(make_auditor: Callable[..., MemoryAuditor], tmp_path: Any) -> None:
    events = _events(make_auditor, 2)
    path = tmp_path / "audit.jsonl"
    exporter = StructlogExporter(output=str(path))
    exporter.export(events[:1])
    exporter.export(events[1:])
    exporter.shutdown()
    assert len(path.read_bytes().splitlines()) == 2


def test_a_failing_stream_reports_failure(make_auditor: Callable[..., MemoryAuditor]) -> None:
    events = _events(make_auditor, 1)
    out = io.BytesIO()
    out.close()
    assert StructlogExporter(output=out).export(events) is ExportResult.FAILURE


def test_into_the_applications_structlog_configuration(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    events = _events(make_auditor, 2)
    with capture_logs() as logs:
        exporter = StructlogExporter(logger=structlog.get_logger("app.audit"))
        assert exporter.export(events) is ExportResult.SUCCESS
    assert [log["event"] for log in logs] == ["org.settings.updated"] * 2
    assert logs[0]["id"] == events[0].id
    assert logs[1]["metadata"] == {"i": 1, "note": "a\\nb"}


def test_the_direct_rendering_matches_structlogs_chain(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    events = _events(make_auditor, 4)
    direct, chained = io.BytesIO(), io.BytesIO()
    StructlogExporter(output=direct).export(events)
    keep: Any = lambda _logger, _name, event_dict: event_dict  # noqa: E731 - a no-op processor
    StructlogExporter(output=chained, processors=[keep]).export(events)
    assert direct.getvalue() == chained.getvalue()
    assert list(orjson.loads(direct.getvalue().splitlines()[0]))[-3:] == [
        "event",
        "logger",
        "level",
    ]
    # More distinct actions than the exporter remembers tails for: still the same lines.
    many = [events[i % len(events)]._replace(action=f"doc.action{i}") for i in range(1500)]
    direct, chained = io.BytesIO(), io.BytesIO()
    exporter = StructlogExporter(output=direct)
    exporter.export(many)
    exporter.export(many[::-1])
    chained_exporter = StructlogExporter(output=chained, processors=[keep])
    chained_exporter.export(many)
    chained_exporter.export(many[::-1])
    assert direct.getvalue() == chained.getvalue()
    assert [orjson.loads(x)["event"] for x in direct.getvalue().splitlines()[:2]] == [
        "doc.action0",
        "doc.action1",
    ]


def test_to_a_pipe_each_write_is_whole_lines_within_pipe_buf(
    make_auditor: Callable[..., MemoryAuditor], monkeypatch: pytest.MonkeyPatch
) -> None:
    auditor = make_auditor()
    for i in range(60):
        auditor.record("doc.updated", metadata={"i": i, "pad": "x" * (i * 37 % 900)})
    long = {f"pad{j}": "y" * 480 for j in range(8)}  # within the metadata cap (4 KiB)
    auditor.record("doc.updated", metadata={"i": 60, **long})  # a line over PIPE_BUF
    events = auditor.wait_for(61)
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr("exporters.log.os.write", spy)
    read, write = os.pipe()
    received = b""
    try:
        with os.fdopen(write, "wb") as output:
            exporter = StructlogExporter(output=output)
            writer = threading.Thread(target=exporter.export, args=(events,))
            writer.start()  # the pipe holds less than the batch: read while it writes
            while received.count(b"\n") < 61:
                received += os.read(read, 65536)
            writer.join(5)
    finally:
        os.close(read)
    assert received == b"".join(writes)
    assert len(received.splitlines()) == 61
    assert len(writes) > 10
    for chunk in writes:
        assert chunk.endswith(b"\n")
        assert len(chunk) <= select.PIPE_BUF or chunk.count(b"\n") == 1
    assert any(len(chunk) > select.PIPE_BUF for chunk in writes)  # the long line, alone


def test_to_a_regular_file_a_batch_is_one_write(
    make_auditor: Callable[..., MemoryAuditor], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _events(make_auditor, 50)
    calls: list[int] = []

    def spy(fd: int, data: bytes) -> int:
        calls.append(fd)
        return 0

    monkeypatch.setattr("exporters.log.os.write", spy)
    path = tmp_path / "audit.jsonl"
    exporter = StructlogExporter(output=str(path))
    assert exporter.export(events) is ExportResult.SUCCESS
    exporter.shutdown()
    assert calls == []  # through the file object, not line by line
    assert len(path.read_bytes().splitlines()) == 50
