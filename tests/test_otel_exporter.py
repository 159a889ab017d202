"""The OTLP exporter against real OTLP receivers (HTTP and gRPC), behind a real uvicorn server.

No mocks: requests go over loopback sockets to uvicorn, audit events go over OTLP to the
receivers in ``tests/otlp_receiver.py``, which decode what arrived.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from audit_middleware import (
    Actor,
    AuditEvent,
    AuditMiddleware,
    Auditor,
    ClientInfo,
    ExportResult,
    RequestInfo,
    Rule,
    Target,
    add_metadata,
    set_actor,
)
from exporters import InMemoryExporter
from tests.conftest import serve, wait_until

try:
    import grpc
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from exporters.otel import OTLPExporter, from_environment, resolve_settings
    from tests.otlp_receiver import GrpcReceiver, HttpReceiver, ReceivedLog
except ImportError as exc:  # a missing dev dependency must fail loudly, never skip
    raise ImportError(
        f"the OTLP exporter tests need the otel and dev extras ({exc}): "
        "pip install -e '.[dev,otel]'"
    ) from exc

REPO = Path(__file__).resolve().parent.parent

Receiver = HttpReceiver | GrpcReceiver
PROTOCOL = {"http": "http/protobuf", "grpc": "grpc"}

RULES = [
    Rule(
        "POST",
        "/orgs/{org_id}/api-keys",
        "org.api_key.created",
        target_type="api_key",
        target_id="response.id",
    ),
    Rule("POST", "/auth/login", {"success": "user.login.succeeded", "denied": "user.login.failed"}),
    Rule(
        "DELETE",
        "/orgs/{org_id}/members/{user_id}",
        "org.member.removed",
        target_type="user",
        target_id="path.user_id",
    ),
    Rule("POST", "/orgs/{org_id}/reports", "org.report.generated"),
]

# outcome -> (severity number, severity text), as docs/otel.md promises
SEVERITY = {
    "success": (9, "INFO"),
    "denied": (13, "WARN"),
    "failure": (13, "WARN"),
    "error": (17, "ERROR"),
}


async def _create_key(request: Request) -> JSONResponse:
    set_actor("u_alice", email="alice@acme.test", name="Alice")
    add_metadata(plan="pro", seats=3, ratio=0.5, tags=["a", "b"], nested={"k": None, "n": [1]})
    return JSONResponse({"id": "key_123"}, status_code=201)


async def _login(request: Request) -> PlainTextResponse:
    return PlainTextResponse("bad password", status_code=401)


async def _remove_member(request: Request) -> PlainTextResponse:
    set_actor("ak_1", type="api_key")
    return PlainTextResponse("no such member", status_code=404)


async def _report(request: Request) -> PlainTextResponse:
    set_actor("u_bob", email="bob@acme.test")
    raise RuntimeError("the report generator broke")


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/orgs/{org_id}/api-keys", _create_key, methods=["POST"]),
            Route("/auth/login", _login, methods=["POST"]),
            Route("/orgs/{org_id}/members/{user_id}", _remove_member, methods=["DELETE"]),
            Route("/orgs/{org_id}/reports", _report, methods=["POST"]),
        ]
    )


def drive(url: str) -> None:
    """One request per outcome: success, denied, failure, error."""
    with httpx.Client(base_url=url, headers={"user-agent": "audit-test/1.0"}) as client:
        assert client.post("/orgs/org_acme/api-keys?verbose=1&tag=a&tag=b").status_code == 201
        assert client.post("/auth/login").status_code == 401
        assert client.delete("/orgs/org_acme/members/u_bob").status_code == 404
        assert client.post("/orgs/org_acme/reports").status_code == 500


def occurred_ns(occurred_at: str) -> int:
    """The expected OTel timestamp, computed independently of the exporter."""
    parsed = datetime.strptime(occurred_at, "%Y-%m-%dT%H:%M:%S.%fZ")
    return calendar.timegm(parsed.timetuple()) * 1_000_000_000 + parsed.microsecond * 1_000


def expected_attributes(event: AuditEvent) -> dict[str, Any]:
    """The attribute mapping of docs/otel.md, written out independently; None means omitted."""
    client, request, target = event.client, event.request, event.target
    error_type = None
    if event.error is not None:
        error_type = event.error.type
    elif event.outcome == "error" and request is not None and request.status is not None:
        error_type = str(request.status)
    attrs = {
        "user.id": event.actor.id,
        "user.email": event.actor.email,
        "client.address": client and client.ip,
        "network.peer.address": client and client.peer,
        "user_agent.original": client and client.user_agent,
        "http.request.method": request and request.method,
        "http.route": request and request.route,
        "url.path": request and request.path,
        "http.response.status_code": request and request.status,
        "error.type": error_type,
        "audit.event.id": event.id,
        "audit.action": event.action,
        "audit.outcome": event.outcome,
        "audit.org.id": event.org_id,
        "audit.actor.type": event.actor.type,
        "audit.target.type": target and target.type,
        "audit.target.id": target and target.id,
        "audit.request.id": request and request.id,
        "audit.integrity.stream": event.integrity and event.integrity["stream"],
        "audit.integrity.seq": event.integrity and event.integrity["seq"],
        "audit.integrity.hash": event.integrity and event.integrity["hash"],
        "audit.schema_version": event.schema_version,
    }
    return {k: v for k, v in attrs.items() if v is not None}


def assert_delivered(
    events: list[AuditEvent], records: list[ReceivedLog], *, service_name: str, since_ns: int
) -> None:
    """Every field of every event arrived, once."""
    by_id = {r.attributes.get("audit.event.id"): r for r in records}
    assert len(records) == len(events) == len(by_id), "each event exactly once"
    for event in events:
        record = by_id[event.id]
        assert record.event_name == event.action
        assert record.time_unix_nano == occurred_ns(event.occurred_at) != 0
        assert since_ns <= record.observed_time_unix_nano <= time.time_ns()
        assert (record.severity_number, record.severity_text) == SEVERITY[event.outcome]
        assert record.attributes == expected_attributes(event)
        assert record.body == event.to_dict()
        assert record.resource["service.name"] == service_name
        assert record.scope_name == "audit_middleware"
        if event.trace is None:
            assert (record.trace_id, record.span_id) == ("", "")


@pytest.fixture
def audited() -> Iterator[Callable[..., tuple[AuditMiddleware, InMemoryExporter]]]:
    """``make(exporter, app=None, **options)`` → the wrapped app and an in-memory twin exporter.

    The twin receives the same events, as the reference for what should arrive over OTLP.
    """
    made: list[AuditMiddleware] = []

    def make(
        exporter: OTLPExporter, app: Any = None, **options: Any
    ) -> tuple[AuditMiddleware, InMemoryExporter]:
        memory = InMemoryExporter()
        options.setdefault("rules", RULES)
        options.setdefault("batch_interval", 0.05)
        options.setdefault("environ", {})
        wrapped = AuditMiddleware(
            make_app() if app is None else app, exporters=[exporter, memory], **options
        )
        made.append(wrapped)
        return wrapped, memory

    yield make
    for wrapped in made:
        wrapped.auditor.shutdown(timeout=2.0)


def receiver_for(transport: str) -> Receiver:
    return HttpReceiver() if transport == "http" else GrpcReceiver()


# -- every field of every event, over both transports -------------------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_every_field_of_every_event_arrives(
    transport: str, audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]]
) -> None:
    since = time.time_ns()
    with receiver_for(transport) as receiver:
        exporter = OTLPExporter(
            endpoint=receiver.endpoint,
            protocol=PROTOCOL[transport],
            compression="gzip",
            service_name="acme-api",
            environ={},
        )
        assert exporter.mode == "otlp"
        wrapped, memory = audited(exporter)
        with serve(wrapped) as url:
            drive(url)
            assert wrapped.auditor.force_flush(timeout=10)
        events = memory.events
        assert sorted(e.outcome for e in events) == ["denied", "error", "failure", "success"]
        assert_delivered(events, receiver.records, service_name="acme-api", since_ns=since)
        if transport == "http":
            assert {h["content-encoding"] for h in receiver.headers} == {"gzip"}
            assert {h["content-type"] for h in receiver.headers} == {"application/x-protobuf"}
    # every attribute of the mapping was exercised by at least one event
    seen = set().union(*(r.attributes for r in receiver.records))
    assert seen == {
        "user.id", "user.email", "client.address", "network.peer.address",
        "user_agent.original", "http.request.method", "http.route", "url.path",
        "http.response.status_code", "error.type", "audit.event.id", "audit.action",
        "audit.outcome", "audit.org.id", "audit.actor.type", "audit.target.type",
        "audit.target.id", "audit.request.id", "audit.schema_version",
        "audit.integrity.stream", "audit.integrity.seq", "audit.integrity.hash",
    }  # fmt: skip
    error = next(r for r in receiver.records if r.attributes["audit.outcome"] == "error")
    assert error.attributes["error.type"] == "RuntimeError"
    denied = next(r for r in receiver.records if r.attributes["audit.outcome"] == "denied")
    assert "user.id" not in denied.attributes  # anonymous: omitted, never None or ""


# -- delivery semantics: outages are retried, losses are counted --------------------------------


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_events_emitted_while_the_receiver_is_down_arrive_when_it_is_back(
    transport: str, audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]]
) -> None:
    since = time.time_ns()
    with receiver_for(transport) as receiver:
        receiver.stop()
        exporter = OTLPExporter(
            endpoint=receiver.endpoint, protocol=PROTOCOL[transport], timeout=0.5, environ={}
        )
        wrapped, memory = audited(exporter, export_retries=100)
        auditor = wrapped.auditor
        with serve(wrapped) as url:
            drive(url)
            wait_until(lambda: auditor.stats().exporters[0].retries > 0)  # it failed for real
            assert receiver.records == []
            receiver.start()
            assert auditor.force_flush(timeout=20)
        stats = auditor.stats()
        assert stats.dropped == 0
        assert stats.exporters[0].exported == len(memory.events) == 4
        assert_delivered(
            memory.events, receiver.records, service_name="unknown_service:python", since_ns=since
        )


@pytest.mark.parametrize(
    ("transport", "refusal"), [("http", 503), ("grpc", "UNAVAILABLE"), ("http", 400)]
)
def test_a_refusing_receiver_is_retried_until_it_accepts(
    transport: str,
    refusal: int | str,
    audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]],
) -> None:
    with receiver_for(transport) as receiver:
        receiver.fail_with(grpc.StatusCode[refusal] if isinstance(refusal, str) else refusal)
        exporter = OTLPExporter(
            endpoint=receiver.endpoint, protocol=PROTOCOL[transport], timeout=0.5, environ={}
        )
        wrapped, memory = audited(exporter, export_retries=100)
        auditor = wrapped.auditor
        with serve(wrapped) as url:
            drive(url)
            wait_until(lambda: auditor.stats().exporters[0].retries > 0)
            assert receiver.requests > 0
            assert receiver.records == []
            receiver.fail_with(None)
            assert auditor.force_flush(timeout=20)
        ids = sorted(r.attributes["audit.event.id"] for r in receiver.records)
        assert ids == sorted(e.id for e in memory.events)
        assert auditor.stats().dropped == 0


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_dead_receiver_loses_nothing_silently(
    transport: str, audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]]
) -> None:
    with receiver_for(transport) as receiver:
        pass  # stopped: its port now refuses connections
    exporter = OTLPExporter(
        endpoint=receiver.endpoint, protocol=PROTOCOL[transport], timeout=0.3, environ={}
    )
    # A long batch interval keeps the events queued until force_flush, so they are lost during it.
    wrapped, memory = audited(exporter, export_retries=2, batch_interval=60)
    auditor = wrapped.auditor
    with serve(wrapped) as url:
        drive(url)
        assert auditor.force_flush(timeout=15) is False
    stats = auditor.stats()
    otlp = stats.exporters[0]
    assert otlp.name == "OTLPExporter"
    assert len(memory.events) == 4
    assert (otlp.exported, otlp.pending, otlp.dropped) == (0, 0, 4)
    assert otlp.retries == 4 * 2
    assert stats.dropped == 4
    assert receiver.requests == 0


def test_a_slow_receiver_never_slows_the_application(
    audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]],
) -> None:
    with HttpReceiver() as receiver:
        receiver.delay(2)
        exporter = OTLPExporter(endpoint=receiver.endpoint, timeout=5, environ={})
        wrapped, memory = audited(exporter)
        with serve(wrapped) as url, httpx.Client(base_url=url) as client:
            assert client.delete("/orgs/org_acme/members/u_bob").status_code == 404
            wait_until(lambda: receiver.requests >= 1)  # the exporter is now stuck in the receiver
            durations = []
            for _ in range(20):
                start = time.perf_counter()
                assert client.delete("/orgs/org_acme/members/u_bob").status_code == 404
                durations.append(time.perf_counter() - start)
            assert len(receiver.records) < 21  # requests completed while delivery lagged
            assert max(durations) < 1.0, durations  # the receiver holds each export 2 s
            receiver.delay(0)
            assert wrapped.auditor.force_flush(timeout=20)
        ids = sorted(r.attributes["audit.event.id"] for r in receiver.records)
        assert ids == sorted(e.id for e in memory.events)
        assert len(ids) == 21


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_one_export_is_bounded_by_the_timeout_despite_the_sdks_own_retries(transport: str) -> None:
    with receiver_for(transport) as receiver:
        exporter = OTLPExporter(
            endpoint=receiver.endpoint, protocol=PROTOCOL[transport], timeout=0.5, environ={}
        )
        receiver.delay(5)
        start = time.monotonic()
        assert exporter.export([_event()]) is ExportResult.FAILURE
        assert time.monotonic() - start < 3.0  # bounded by the timeout, not the 5 s delay
        receiver.fail_with(503 if transport == "http" else grpc.StatusCode.UNAVAILABLE)
        receiver.delay(0)
        start = time.monotonic()
        assert exporter.export([_event()]) is ExportResult.FAILURE
        assert time.monotonic() - start < 3.0
        exporter.shutdown()


# -- configuration from OTEL_* variables --------------------------------------------------------


def _record_through(exporter: OTLPExporter) -> list[AuditEvent]:
    memory = InMemoryExporter()
    auditor = Auditor(exporters=[exporter, memory], batch_interval=0.01, environ={})
    try:
        auditor.record("org.settings.updated", org_id="org_acme", metadata={"field": "sso"})
        auditor.record("org.export.requested", outcome="denied", target=Target("export", "e1"))
        assert auditor.force_flush(timeout=10)
        return memory.events
    finally:
        auditor.shutdown(timeout=2)


def test_http_configured_by_the_environment() -> None:
    since = time.time_ns()
    with HttpReceiver() as receiver:
        exporter = from_environment(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url + "/",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr%20t,X-Tenant=acme",
                "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                "OTEL_SERVICE_NAME": "billing",
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,deployment.environment.name=test,"
                "team=audit%2Csecurity",
            }
        )
        assert exporter.mode == "otlp"
        assert exporter.settings is not None
        assert exporter.settings.timeout == 2.5
        events = _record_through(exporter)
        assert_delivered(events, receiver.records, service_name="billing", since_ns=since)
        resource = receiver.records[0].resource
        assert resource["deployment.environment.name"] == "test"
        assert resource["team"] == "audit,security"
        for headers in receiver.headers:
            assert headers["api-key"] == "s3cr t"
            assert headers["x-tenant"] == "acme"
            assert headers["content-encoding"] == "gzip"


def test_grpc_configured_by_the_environment() -> None:
    since = time.time_ns()
    with GrpcReceiver() as receiver:
        exporter = from_environment(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # the logs variable wins
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "authorization=Bearer%20tok",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=ledger,service.version=1.2.3",
            }
        )
        assert exporter.settings is not None
        assert exporter.settings.protocol == "grpc"
        assert exporter.settings.compression == "gzip"
        events = _record_through(exporter)
        assert_delivered(events, receiver.records, service_name="ledger", since_ns=since)
        assert receiver.records[0].resource["service.version"] == "1.2.3"
        assert {h["authorization"] for h in receiver.headers} == {"Bearer tok"}


def test_keywords_override_the_environment() -> None:
    with HttpReceiver() as receiver:
        exporter = OTLPExporter(
            endpoint=receiver.endpoint,
            protocol="http/protobuf",
            headers={"X-Tenant": "globex"},
            service_name="kw-service",
            resource_attributes={"team": "kw", "replicas": 3},
            environ={
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme,x-env=prod",
                "OTEL_SERVICE_NAME": "env-service",
                "OTEL_RESOURCE_ATTRIBUTES": "team=env,region=eu",
            },
        )
        _record_through(exporter)
        resource = receiver.records[0].resource
        assert (resource["service.name"], resource["team"]) == ("kw-service", "kw")
        assert (resource["region"], resource["replicas"]) == ("eu", 3)
        assert receiver.headers[0]["x-tenant"] == "globex"
        assert receiver.headers[0]["x-env"] == "prod"  # per header: the keyword adds and overrides


def test_settings_precedence_and_defaults() -> None:
    http = resolve_settings(environ={})
    assert (http.endpoint, http.protocol, http.compression, http.timeout) == (
        "http://localhost:4318/v1/logs",
        "http/protobuf",
        "none",
        10.0,
    )
    assert http.resource_attributes == {"service.name": "unknown_service:python"}
    grpc_default = resolve_settings(protocol="grpc", environ={})
    assert (grpc_default.endpoint, grpc_default.insecure) == ("http://localhost:4317", True)
    base = resolve_settings(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/otlp/"})
    assert base.endpoint == "https://collector:4318/otlp/v1/logs"
    assert base.insecure is False
    grpc_base = resolve_settings(
        protocol="grpc", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317"}
    )
    assert grpc_base.endpoint == "https://collector:4317"  # no path appended for gRPC
    empty_is_unset = resolve_settings(
        environ={"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "", "OTEL_EXPORTER_OTLP_TIMEOUT": "500"}
    )
    assert empty_is_unset.timeout == 0.5
    assert resolve_settings(timeout=3, environ={"OTEL_EXPORTER_OTLP_TIMEOUT": "500"}).timeout == 3
    insecure_env = resolve_settings(
        protocol="grpc",
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_EXPORTER_OTLP_LOGS_INSECURE": "false",
        },
    )
    assert insecure_env.insecure is False
    assert "s3cr" not in repr(resolve_settings(headers={"api-key": "s3cr"}, environ={}))


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        ({"protocol": "http/json"}, {}, "protocol='http/json'"),
        ({}, {"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"),
        ({"compression": "zstd"}, {}, "compression='zstd'"),
        ({}, {"OTEL_EXPORTER_OTLP_COMPRESSION": "br"}, "OTEL_EXPORTER_OTLP_COMPRESSION='br'"),
        ({"timeout": 0}, {}, "timeout=0"),
        ({"timeout": float("nan")}, {}, "timeout=nan"),
        ({}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "10s"}, "OTEL_EXPORTER_OTLP_TIMEOUT='10s'"),
        ({}, {"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"),
        ({"endpoint": "collector:4318"}, {}, "endpoint: the endpoint must be an http"),
        ({"endpoint": "http://host:99999/v1/logs"}, {}, "endpoint: invalid endpoint URL"),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({}, {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"headers": {"bad name": "v"}}, {}, "invalid header name"),
        ({"headers": {"x": "a\r\nb"}}, {}, "control character"),
        ({"insecure": True, "endpoint": "https://c:4317", "protocol": "grpc"}, {}, "https://"),
        ({}, {"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "OTEL_EXPORTER_OTLP_INSECURE='yes'"),
        ({"resource_attributes": {"k": {"nested": 1}}}, {}, "resource attribute 'k'"),
        ({"service_name": " "}, {}, "service_name"),
        ({}, {"OTEL_RESOURCE_ATTRIBUTES": "=v"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_bad_settings_raise_value_error_at_construction(
    options: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        OTLPExporter(**options, environ=environ)


def test_exclusive_modes_are_rejected() -> None:
    provider = LoggerProvider(shutdown_on_exit=False)
    try:
        with pytest.raises(ValueError, match="cannot be combined"):
            OTLPExporter(logger_provider=provider, endpoint="http://127.0.0.1:9/v1/logs")
        with pytest.raises(ValueError, match="not both"):
            OTLPExporter(logger_provider=provider, use_global_provider=True)
        with pytest.raises(ValueError, match="no OpenTelemetry SDK LoggerProvider is set"):
            OTLPExporter(use_global_provider=True, environ={})
    finally:
        provider.shutdown()


# -- mapping details ----------------------------------------------------------------------------


def _event(**changes: Any) -> AuditEvent:
    event = AuditEvent(
        id="01936f3e-8e1c-7cc0-8a6b-0d5b2d5c1e01",
        occurred_at="2026-11-27T12:00:00.123456Z",
        action="org.settings.updated",
        outcome="success",
        actor=Actor("u_1", email="u1@acme.test"),
        org_id="org_acme",
        request=RequestInfo(
            "req_1", "PATCH", "/orgs/org_acme/settings", "/orgs/{org_id}/settings", 200
        ),
        client=ClientInfo("203.0.113.5", "10.0.0.2", "curl/8"),
    )
    return event._replace(**changes)


def test_values_otlp_cannot_carry_are_converted_not_fatal() -> None:
    with HttpReceiver() as receiver:
        exporter = OTLPExporter(endpoint=receiver.endpoint, environ={})
        odd = {
            "huge": 2**80,
            "when": datetime(2026, 1, 2),
            "pair": (1, "x"),
            "set": {"b", "a"},
            7: "int key",
        }
        assert exporter.export([_event(metadata=odd)]) is ExportResult.SUCCESS
        (record,) = receiver.records
        assert record.body["metadata"] == {
            "huge": str(2**80),
            "when": "2026-01-02 00:00:00",
            "pair": [1, "x"],
            "set": ["a", "b"],
            "7": "int key",
        }
        exporter.shutdown()


def test_an_unparsable_occurred_at_still_gets_a_real_timestamp() -> None:
    with HttpReceiver() as receiver:
        exporter = OTLPExporter(endpoint=receiver.endpoint, environ={})
        before = time.time_ns()
        assert exporter.export([_event(occurred_at="yesterday")]) is ExportResult.SUCCESS
        (record,) = receiver.records
        assert before <= record.time_unix_nano <= time.time_ns()
        exporter.shutdown()


def test_empty_batches_and_exports_after_shutdown() -> None:
    with HttpReceiver() as receiver:
        exporter = OTLPExporter(endpoint=receiver.endpoint, environ={})
        assert exporter.export([]) is ExportResult.SUCCESS
        assert exporter.force_flush() is True
        exporter.shutdown()
        assert exporter.export([_event()]) is ExportResult.FAILURE
        assert receiver.requests == 0


def test_trace_field_becomes_the_records_trace_context() -> None:
    trace = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    with GrpcReceiver() as receiver:
        exporter = OTLPExporter(endpoint=receiver.endpoint, protocol="grpc", environ={})
        events = [_event(trace=trace), _event(trace=None), _event(trace={"trace_id": "zz"})]
        assert exporter.export(events) is ExportResult.SUCCESS
        with_trace, without, malformed = receiver.records
        assert (with_trace.trace_id, with_trace.span_id, with_trace.flags) == (
            trace["trace_id"],
            trace["span_id"],
            1,
        )
        assert (without.trace_id, without.span_id) == ("", "")
        assert (malformed.trace_id, malformed.span_id) == ("", "")
        exporter.shutdown()


# -- trace correlation through the real middleware stack ----------------------------------------


def test_trace_ids_of_the_request_span_arrive_on_the_record(
    audited: Callable[..., tuple[AuditMiddleware, InMemoryExporter]],
) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    traced = OpenTelemetryMiddleware(make_app(), tracer_provider=tracer_provider)
    with HttpReceiver() as receiver:
        exporter = OTLPExporter(endpoint=receiver.endpoint, environ={})
        wrapped, memory = audited(exporter, app=traced)
        with serve(wrapped) as url:
            response = httpx.post(f"{url}/orgs/org_acme/api-keys")
            assert response.status_code == 201
            assert wrapped.auditor.force_flush(timeout=10)
        (event,) = memory.events
        (record,) = receiver.records
    server = [s for s in spans.get_finished_spans() if s.parent is None]
    assert len(server) == 1
    context = server[0].get_span_context()
    assert context is not None
    assert record.trace_id == f"{context.trace_id:032x}"
    # the span active when the response started: the server span or its "http send" child
    assert record.span_id in {
        f"{s.context.span_id:016x}" for s in spans.get_finished_spans() if s.context
    }
    assert record.flags & 1  # sampled
    assert event.to_dict()["trace"] == {"trace_id": record.trace_id, "span_id": record.span_id}
    assert record.body == event.to_dict()
    tracer_provider.shutdown()


# -- the application's LoggerProvider -----------------------------------------------------------


def test_an_explicit_logger_provider_receives_the_events() -> None:
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # untyped in the SDK
    provider = LoggerProvider(resource=Resource({"service.name": "app"}), shutdown_on_exit=False)
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    try:
        exporter = OTLPExporter(logger_provider=provider, timeout=2)
        assert exporter.mode == "provider"
        event = _event(
            trace={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
        )
        assert exporter.export([event]) is ExportResult.SUCCESS
        assert exporter.force_flush() is True
        (readable,) = logs.get_finished_logs()
        record = readable.log_record
        assert record.event_name == event.action
        assert record.timestamp == occurred_ns(event.occurred_at)
        assert dict(record.attributes or {}) == expected_attributes(event)
        assert record.body == event.to_dict()
        assert (f"{record.trace_id:032x}", f"{record.span_id:016x}") == (
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
        )
        assert readable.instrumentation_scope is not None
        assert readable.instrumentation_scope.name == "audit_middleware"
        exporter.shutdown()
        assert not logs._stopped  # the app's pipeline lives on
    finally:
        provider.shutdown()


def test_a_provider_that_accepts_nothing_is_a_failure_not_a_silent_loss() -> None:
    provider = LoggerProvider(shutdown_on_exit=False)  # no processor: nowhere to go
    try:
        exporter = OTLPExporter(logger_provider=provider)
        assert exporter.export([_event()]) is ExportResult.FAILURE
    finally:
        provider.shutdown()


def test_own_pipeline_never_installs_a_global_provider() -> None:
    OTLPExporter(endpoint="http://127.0.0.1:9/v1/logs", environ={}).shutdown()
    from_environment({}).shutdown()
    assert not isinstance(get_logger_provider(), LoggerProvider)


def _run(script: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_global_logger_provider_is_reused() -> None:
    out = _run(
        """
        import json
        from opentelemetry._logs import get_logger_provider, set_logger_provider
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.resources import Resource

        logs = InMemoryLogRecordExporter()
        provider = LoggerProvider(
            resource=Resource({"service.name": "app"}), shutdown_on_exit=False
        )
        provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        set_logger_provider(provider)

        from audit_middleware import Auditor
        from exporters import InMemoryExporter
        from exporters.otel import OTLPExporter, from_environment

        reused = from_environment({})
        own = OTLPExporter(endpoint="http://127.0.0.1:9/v1/logs", environ={})
        opted_out = OTLPExporter(use_global_provider=False, environ={})
        memory = InMemoryExporter()
        auditor = Auditor(exporters=[reused, memory], batch_interval=0.01, environ={})
        auditor.record("org.settings.updated", org_id="o1", metadata={"k": "v"})
        flushed = auditor.force_flush(5)
        auditor.shutdown(5)
        (event,) = memory.events
        (readable,) = logs.get_finished_logs()
        record = readable.log_record
        print(json.dumps({
            "modes": [reused.mode, own.mode, opted_out.mode],
            "flushed": flushed,
            "same_provider": get_logger_provider() is provider,
            "event_name": record.event_name,
            "timestamp": record.timestamp,
            "attributes": dict(record.attributes),
            "body": record.body,
            "scope": readable.instrumentation_scope.name,
            "service": readable.resource.attributes["service.name"],
            "event": event.to_dict(),
            "app_pipeline_alive": not logs._stopped,
        }))
        """
    )
    result = json.loads(out)
    assert result["modes"] == ["provider", "otlp", "otlp"]
    assert result["flushed"] is True
    assert result["same_provider"] is True
    event = result["event"]
    assert result["event_name"] == event["action"] == "org.settings.updated"
    assert result["timestamp"] == occurred_ns(event["occurred_at"])
    assert result["body"] == event
    assert result["attributes"]["audit.event.id"] == event["id"]
    assert result["attributes"]["audit.org.id"] == "o1"
    assert (result["scope"], result["service"]) == ("audit_middleware", "app")
    assert result["app_pipeline_alive"] is True  # our shutdown flushed it, never shut it down


def test_importing_exporters_needs_no_opentelemetry_and_a_missing_sdk_says_what_to_install() -> (
    None
):
    out = _run(
        """
        import importlib.abc, sys

        import exporters, exporters.otel
        print(sorted(m for m in sys.modules if m.startswith(("opentelemetry", "grpc"))))

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, Block())
        try:
            exporters.otel.OTLPExporter(environ={})
        except ImportError as exc:
            print(exc)
        """
    )
    loaded, error = out.splitlines()
    assert loaded == "[]"
    assert "pip install 'audit-log-middleware[otel]'" in error


def test_otlp_selected_by_name_from_the_environment() -> None:
    with HttpReceiver() as receiver:
        env = {
            "AUDIT_LOG_EXPORTERS": "otlp",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "billing",
        }
        auditor = Auditor(environ=env, batch_interval=0.01)
        auditor.record("org.plan.changed", org_id="org_1")
        assert auditor.force_flush(timeout=10)
        auditor.shutdown(timeout=5)
        assert [r.event_name for r in receiver.records] == ["org.plan.changed"]
