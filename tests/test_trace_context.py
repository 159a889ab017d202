"""Trace correlation: the span active for the request is recorded in the event."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit_middleware import AuditMiddleware
from tests.conftest import MemoryAuditor


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _traced_app() -> tuple[OpenTelemetryMiddleware, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = Starlette(routes=[Route("/x", _ok, methods=["POST"])])
    return OpenTelemetryMiddleware(app, tracer_provider=provider), spans


def test_span_ids_of_an_inner_tracing_middleware_are_recorded(
    make_auditor: Callable[..., MemoryAuditor],
) -> None:
    traced, spans = _traced_app()
    auditor = make_auditor(trace_context="on")
    TestClient(AuditMiddleware(traced, auditor=auditor)).post("/x")
    (event,) = auditor.wait_for(1)
    server = [s for s in spans.get_finished_spans() if s.parent is None]
    assert len(server) == 1
    context = server[0].get_span_context()
    assert context is not None
    assert event.trace is not None
    assert event.trace["trace_id"] == f"{context.trace_id:032x}"
    # the id of the span active when the response started: the server span or its send child
    ids = {f"{s.context.span_id:016x}" for s in spans.get_finished_spans() if s.context}
    assert event.trace["span_id"] in ids


def test_off_records_nothing(make_auditor: Callable[..., MemoryAuditor]) -> None:
    traced, _ = _traced_app()
    auditor = make_auditor(trace_context="off")
    TestClient(AuditMiddleware(traced, auditor=auditor)).post("/x")
    (event,) = auditor.wait_for(1)
    assert event.trace is None


def test_no_active_span_records_null(make_auditor: Callable[..., MemoryAuditor]) -> None:
    auditor = make_auditor(trace_context="on")
    app = Starlette(routes=[Route("/x", _ok, methods=["POST"])])
    TestClient(AuditMiddleware(app, auditor=auditor)).post("/x")
    (event,) = auditor.wait_for(1)
    assert event.trace is None
