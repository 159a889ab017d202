"""Real OTLP log receivers on loopback, for tests: OTLP/HTTP (protobuf) and OTLP/gRPC.

Both are context managers exposing ``endpoint``, the decoded ``records``, the number of export
``requests`` received, the ``headers`` of each request, and switches that simulate trouble:
``fail_with(status)`` (HTTP status / gRPC status code; ``None`` heals), ``delay(seconds)`` (a slow
receiver) and ``stop()`` / ``start()`` (down, then up again on the same port).
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

try:
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
except ImportError as exc:  # pragma: no cover - a missing dev dependency must fail, not skip
    raise ImportError(
        f"the OTLP test receiver needs opentelemetry-proto and grpcio ({exc}): "
        "pip install -e '.[dev]'"
    ) from exc

__all__ = [
    "GrpcReceiver",
    "HttpReceiver",
    "ReceivedLog",
    "decode_attributes",
    "decode_value",
]


def decode_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as plain Python data (kvlist → dict, array → list, unset → None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: decode_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def decode_attributes(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP ``KeyValue`` pairs as a dict."""
    return {kv.key: decode_value(kv.value) for kv in attributes}


@dataclass(frozen=True, slots=True)
class ReceivedLog:
    """One decoded OTLP log record, with its resource and instrumentation scope."""

    event_name: str
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str  # lowercase hex; "" when the record carries no trace context
    span_id: str
    flags: int
    resource: dict[str, Any]
    scope_name: str
    scope_version: str


def _decode_request(request: ExportLogsServiceRequest) -> list[ReceivedLog]:
    out: list[ReceivedLog] = []
    for resource_logs in request.resource_logs:
        resource = decode_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                out.append(
                    ReceivedLog(
                        event_name=record.event_name,
                        time_unix_nano=record.time_unix_nano,
                        observed_time_unix_nano=record.observed_time_unix_nano,
                        severity_number=record.severity_number,
                        severity_text=record.severity_text,
                        body=decode_value(record.body),
                        attributes=decode_attributes(record.attributes),
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        flags=record.flags,
                        resource=resource,
                        scope_name=scope_logs.scope.name,
                        scope_version=scope_logs.scope.version,
                    )
                )
    return out


class _Receiver:
    """State and switches shared by both transports; subclasses bind and serve."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[ReceivedLog] = []
        self._headers: list[dict[str, str]] = []
        self._requests = 0
        self._failure: Any = None
        self._delay = 0.0
        self._woken = threading.Event()  # cuts a delay short on stop()
        self.port = 0

    # -- observations ---------------------------------------------------------------------------

    @property
    def records(self) -> list[ReceivedLog]:
        """Every log record accepted so far (a snapshot)."""
        with self._lock:
            return list(self._records)

    @property
    def requests(self) -> int:
        """Export requests received, accepted or refused."""
        with self._lock:
            return self._requests

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers (HTTP) or metadata (gRPC) of each request, keys lowercased."""
        with self._lock:
            return list(self._headers)

    # -- switches -------------------------------------------------------------------------------

    def fail_with(self, status: Any) -> None:
        """Refuse every request with ``status`` until called with None."""
        with self._lock:
            self._failure = status

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request (0 restores)."""
        with self._lock:
            self._delay = seconds

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request handling -----------------------------------------------------------------------

    def _arrive(self, headers: dict[str, str]) -> tuple[Any, float]:
        with self._lock:
            self._requests += 1
            self._headers.append(headers)
            return self._failure, self._delay

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._woken.wait(seconds)

    def _accept(self, request: ExportLogsServiceRequest) -> None:
        decoded = _decode_request(request)
        with self._lock:
            self._records.extend(decoded)


class HttpReceiver(_Receiver):
    """OTLP/HTTP protobuf receiver: ``POST /v1/logs`` on ``127.0.0.1``."""

    def __init__(self) -> None:
        super().__init__()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` would hold it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The full logs URL, as ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` / ``endpoint=`` hold it."""
        return f"{self.base_url}/v1/logs"

    def start(self) -> None:
        """Listen (again) on the same port; the first start picks a free one."""
        if self._server is not None:
            return
        self._woken.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening; connections are refused until ``start()``."""
        server, self._server = self._server, None
        if server is None:
            return
        self._woken.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so stop() really takes the receiver down.
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                failure, delay = receiver._arrive(headers)
                receiver._wait(delay)
                if receiver._woken.is_set():
                    return  # stopped while delaying: the connection just drops
                if self.path != "/v1/logs":
                    self._reply(HTTPStatus.NOT_FOUND, b"", "text/plain")
                    return
                if failure is not None:
                    self._reply(int(failure), b"unavailable", "text/plain")
                    return
                encoding = headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportLogsServiceRequest()
                request.ParseFromString(body)
                receiver._accept(request)
                reply = ExportLogsServiceResponse().SerializeToString()
                self._reply(HTTPStatus.OK, reply, "application/x-protobuf")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


class GrpcReceiver(_Receiver):
    """OTLP/gRPC receiver: ``LogsService/Export`` on ``127.0.0.1``, no TLS."""

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>`` (the scheme tells the exporter: no TLS)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the same port; the first start picks a free one."""
        if self._server is not None:
            return
        self._woken.clear()
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self), server
        )
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if port == 0:
            raise RuntimeError(f"cannot listen on 127.0.0.1:{self.port}")
        self.port = port
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop listening; calls fail with UNAVAILABLE until ``start()``."""
        server, self._server = self._server, None
        if server is None:
            return
        self._woken.set()
        server.stop(grace=None).wait(5)


class _Servicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: GrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> ExportLogsServiceResponse:
        metadata = {str(k).lower(): str(v) for k, v in context.invocation_metadata()}
        failure, delay = self._receiver._arrive(metadata)
        self._receiver._wait(delay)
        if self._receiver._woken.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver stopped")
        if failure is not None:
            context.abort(failure, "receiver told to fail")
        self._receiver._accept(request)
        return ExportLogsServiceResponse()
