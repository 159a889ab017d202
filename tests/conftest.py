"""Shared fixtures: schema validation of every event, auditors with in-memory exporters, servers."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import uvicorn
from waitress import wasyncore
from waitress.server import create_server

from audit_middleware import AuditEvent, Auditor, _hooks, load_schema
from exporters import InMemoryExporter
from tests.s3_server import S3Endpoint, running_s3


def _load_compile_script() -> Any:
    path = Path(__file__).resolve().parent.parent / "scripts" / "compile.py"
    spec = importlib.util.spec_from_file_location("audit_compile_script", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compile_script = _load_compile_script()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test compiled modules that no longer match their source."""
    if os.environ.get("AUDIT_LOG_PURE_PYTHON"):
        return
    old = compile_script.stale()
    if old:
        raise pytest.UsageError(
            f"stale compiled modules {old}: run `make compiled` to rebuild them, "
            "`make pure` to remove them, or set AUDIT_LOG_PURE_PYTHON=1"
        )


_validator = jsonschema.Draft202012Validator(
    load_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def assert_valid(event: AuditEvent) -> None:
    """Fail unless ``event`` conforms to the published JSON Schema."""
    errors = sorted(_validator.iter_errors(event.to_dict()), key=str)
    assert not errors, f"event {event.id} violates the schema: {errors[0]}"


@pytest.fixture(autouse=True)
def validate_every_event() -> Iterator[None]:
    """Every event any test builds is validated against the JSON Schema."""
    problems: list[str] = []

    def observe(event: AuditEvent) -> None:
        errors = list(_validator.iter_errors(event.to_dict()))
        if errors:
            problems.append(f"{event.action}: {errors[0].message}")

    _hooks.add_observer(observe, inline=False, deliver=True)
    try:
        yield
    finally:
        _hooks.remove_observer(observe, inline=False, deliver=True)
    assert not problems, f"events violating the schema: {problems}"


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class MemoryAuditor(Auditor):
    """An Auditor with an in-memory exporter and fast batching."""

    memory: InMemoryExporter

    def wait_for(self, n: int, timeout: float = 5.0) -> list[AuditEvent]:
        """Flush until at least ``n`` events arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.force_flush(timeout=1.0)
            if len(self.memory.events) >= n:
                return self.memory.events
            time.sleep(0.01)
        raise AssertionError(f"expected {n} events, got {len(self.memory.events)}")


@pytest.fixture
def make_auditor() -> Iterator[Callable[..., MemoryAuditor]]:
    """Build auditors that deliver to memory; all are shut down after the test."""
    made: list[MemoryAuditor] = []

    def make(**options: Any) -> MemoryAuditor:
        memory = InMemoryExporter()
        options.setdefault("exporters", [memory])
        options.setdefault("batch_interval", 0.01)
        options.setdefault("environ", {})
        auditor = MemoryAuditor(**options)
        auditor.memory = memory
        made.append(auditor)
        return auditor

    yield make
    for auditor in made:
        auditor.shutdown(timeout=2.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on loopback; yield its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_wsgi(app: Any, threads: int = 4) -> Iterator[str]:
    """Run ``app`` under waitress on loopback; yield its base URL."""
    port = _free_port()
    server = create_server(app, host="127.0.0.1", port=port, threads=threads)
    stop = threading.Event()

    def run() -> None:
        # waitress's own run() loops until its map is empty, and stopping it means closing the
        # sockets from the loop's thread through its trigger pipe. A short select timeout and a
        # flag stop it instead, whatever state the trigger is in; the sockets are closed here,
        # in the loop's thread, so none is pulled out from under its select().
        while not stop.is_set() and server._map:
            wasyncore.loop(timeout=0.02, map=server._map, use_poll=True, count=1)
        wasyncore.close_all(server._map)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        deadline = time.monotonic() + 5  # let tasks finish before the sockets close
        dispatcher = server.task_dispatcher
        while (dispatcher.active_count or dispatcher.queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join(timeout=5)
        server.task_dispatcher.shutdown()
        assert not thread.is_alive(), "the WSGI server did not stop"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[S3Endpoint]:
    """A real S3 endpoint (moto server) on loopback for the test module."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    try:
        with running_s3() as s3:
            yield s3
    finally:
        werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def module_client(endpoint: S3Endpoint) -> Any:
    return endpoint.client()


@pytest.fixture
def s3(endpoint: S3Endpoint, module_client: Any) -> Any:
    """A client for an endpoint with no buckets."""
    endpoint.reset()
    return module_client


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
