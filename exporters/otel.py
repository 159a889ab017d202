"""OpenTelemetry exporter: each audit event becomes one OTel *log event* sent over OTLP.

An event is a ``LogRecord`` whose ``event_name`` is the action, whose timestamp is the event's own
``occurred_at``, whose body is the whole event (``event.to_dict()``) and whose attributes follow
the semantic conventions plus an ``audit.*`` namespace. See ``docs/otel.md`` for the mapping, the
configuration and the delivery guarantees.

Delivery is synchronous: ``export(batch)`` hands the records to the OTLP exporter of the SDK and
returns SUCCESS only when the collector accepted them, so the pipeline's retries, backoff and
drop counters apply to a dead or refusing collector. No ``BatchLogRecordProcessor`` sits in
between (its ``force_flush`` reports True even when nothing was delivered).

Every OpenTelemetry import of the ``exporters`` package is in this module, and runs only when an
exporter is built, so ``import exporters`` works without the ``otel`` extra.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast
from urllib.parse import unquote, urlsplit

from audit_middleware._event import AuditEvent
from audit_middleware._export import ExportResult
from audit_middleware._version import __version__
from audit_middleware._warn import logger, warn_limited

if TYPE_CHECKING:
    from opentelemetry._logs import Logger, LoggerProvider, SeverityNumber
    from opentelemetry.context import Context
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.util.types import AnyValue, AttributeValue

__all__ = [
    "OTLPExporter",
    "OTLPSettings",
    "from_environment",
    "resolve_settings",
    "trace_capture",
]

ProtocolName = Literal["http/protobuf", "grpc"]
CompressionName = Literal["gzip", "none"]

INSTALL_HINT: Final = "pip install 'audit-log-middleware[otel]'"
#: Instrumentation scope of every audit log record.
SCOPE_NAME: Final = "audit_middleware"

_PROTOCOLS: Final[tuple[ProtocolName, ...]] = ("http/protobuf", "grpc")
_COMPRESSIONS: Final[tuple[CompressionName, ...]] = ("gzip", "none")
_DEFAULT_ENDPOINTS: Final[Mapping[ProtocolName, str]] = {
    "http/protobuf": "http://localhost:4318/v1/logs",
    "grpc": "http://localhost:4317",
}
_DEFAULT_TIMEOUT_S: Final = 10.0
_UNKNOWN_SERVICE: Final = "unknown_service:python"
# Keyword arguments that configure our own OTLP connection, meaningless with an app's provider.
_CONNECTION_OPTIONS: Final = (
    "endpoint",
    "protocol",
    "headers",
    "compression",
    "insecure",
    "service_name",
    "resource_attributes",
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN: Final[frozenset[type]] = frozenset({str, bool, float, type(None)})

# outcome -> (SeverityNumber member name, severity text)
SEVERITY: Final[Mapping[str, tuple[str, str]]] = {
    "success": ("INFO", "INFO"),
    "denied": ("WARN", "WARN"),
    "failure": ("WARN", "WARN"),
    "error": ("ERROR", "ERROR"),
}


# -- configuration (pure Python, no OpenTelemetry needed) ---------------------------------------


@dataclass(frozen=True, slots=True)
class OTLPSettings:
    """The resolved connection settings of an :class:`OTLPExporter` (own-pipeline mode)."""

    endpoint: str
    protocol: ProtocolName
    headers: Mapping[str, str]
    compression: CompressionName
    timeout: float  # seconds
    insecure: bool  # gRPC only: plaintext instead of TLS
    resource_attributes: Mapping[str, AttributeValue]  # service.name included

    def __repr__(self) -> str:  # header values are often credentials: never print them
        return (
            f"OTLPSettings(endpoint={self.endpoint!r}, protocol={self.protocol!r}, "
            f"headers={sorted(self.headers)!r}, compression={self.compression!r}, "
            f"timeout={self.timeout!r}, insecure={self.insecure!r}, "
            f"resource_attributes={dict(self.resource_attributes)!r})"
        )


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-empty value (an empty value counts as unset)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _pairs(text: str, source: str) -> dict[str, str]:
    """Parse ``key=value,key2=value2`` (percent-encoded, as the OTel spec defines it)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            raise ValueError(f"{source}: expected comma-separated key=value pairs, got {item!r}")
        out[key] = unquote(value.strip())
    return out


def _check_headers(headers: Mapping[str, str], source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"{source}: header names and values must be strings")
        lowered = name.strip().lower()  # gRPC metadata keys must be lowercase
        if not _HEADER_NAME.fullmatch(lowered):
            raise ValueError(f"{source}: invalid header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{source}: header {name!r} has a control character in its value")
        out[lowered] = value
    return out


def _check_attribute(key: object, value: object, source: str) -> None:
    scalar = (str, bool, int, float)
    ok = isinstance(value, scalar) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value)
    )
    if not isinstance(key, str) or not key or not ok:
        raise ValueError(
            f"{source}: resource attribute {key!r} must have a str, bool, int or float value "
            f"(or a list of them), got {value!r}"
        )


def _timeout_from_env(name: str, text: str) -> float:
    try:
        millis = float(text)
    except ValueError:
        millis = math.nan
    if not math.isfinite(millis) or millis <= 0:
        raise ValueError(f"{name}={text!r}: expected a positive number of milliseconds")
    return millis / 1000.0


def _bool_from_env(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{name}={text!r}: expected 'true' or 'false'")
    return lowered == "true"


def _check_url(url: str, source: str) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"{source}: invalid endpoint URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{source}: the endpoint must be an http:// or https:// URL with a host, got {url!r}"
        )
    return url


def resolve_settings(
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    compression: str | None = None,
    timeout: float | None = None,
    service_name: str | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    insecure: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> OTLPSettings:
    """Merge keyword arguments over the standard ``OTEL_*`` variables of ``environ``.

    Raises ValueError, naming the keyword or variable, for any value that cannot work.
    """
    env = os.environ if environ is None else environ

    # protocol
    if protocol is not None:
        source, raw_protocol = "protocol", protocol
    else:
        found = _env(env, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        source, raw_protocol = found or ("default", "http/protobuf")
    resolved_protocol: ProtocolName
    if raw_protocol == "http/protobuf":
        resolved_protocol = "http/protobuf"
    elif raw_protocol == "grpc":
        resolved_protocol = "grpc"
    else:
        raise ValueError(
            f"{source}={raw_protocol!r}: expected one of {_PROTOCOLS} "
            "(OpenTelemetry Python has no http/json exporter)"
        )

    # endpoint: keyword and the logs variable verbatim; the generic variable is a base URL
    if endpoint is not None:
        url = _check_url(endpoint, "endpoint")
    elif found := _env(env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        url = _check_url(found[1], found[0])
    elif found := _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = _check_url(found[1], found[0])
        url = base if resolved_protocol == "grpc" else f"{base.rstrip('/')}/v1/logs"
    else:
        url = _DEFAULT_ENDPOINTS[resolved_protocol]
    scheme = urlsplit(url).scheme

    # headers: the environment's, then the keyword's on top (per header)
    merged_headers: dict[str, str] = {}
    if found := _env(env, "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        merged_headers.update(_check_headers(_pairs(found[1], found[0]), found[0]))
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise ValueError("headers: expected a mapping of header name to value")
        merged_headers.update(_check_headers(headers, "headers"))

    # compression
    if compression is not None:
        source, raw_compression = "compression", compression
    else:
        found = _env(env, "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
        source, raw_compression = found or ("default", "none")
    lowered = raw_compression.strip().lower() if isinstance(raw_compression, str) else ""
    if lowered not in _COMPRESSIONS:
        raise ValueError(f"{source}={raw_compression!r}: expected one of {_COMPRESSIONS}")
    resolved_compression: CompressionName = "gzip" if lowered == "gzip" else "none"

    # timeout: keyword in seconds; the variables in milliseconds, as the OTel spec defines them
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ValueError(f"timeout={timeout!r}: expected a number of seconds")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout={timeout!r}: expected a positive number of seconds")
        resolved_timeout = float(timeout)
    elif found := _env(env, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        resolved_timeout = _timeout_from_env(*found)
    else:
        resolved_timeout = _DEFAULT_TIMEOUT_S

    # insecure (gRPC): keyword, variables, else plaintext exactly for http:// endpoints
    if insecure is not None:
        if not isinstance(insecure, bool):
            raise ValueError(f"insecure={insecure!r}: expected True or False")
        resolved_insecure = insecure
    elif found := _env(env, "OTEL_EXPORTER_OTLP_LOGS_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"):
        resolved_insecure = _bool_from_env(*found)
    else:
        resolved_insecure = scheme == "http"
    if resolved_insecure and scheme == "https":
        raise ValueError(f"insecure=True contradicts the https:// endpoint {url!r}")

    # resource: OTEL_RESOURCE_ATTRIBUTES < resource_attributes= ; service.name from
    # service_name= > resource_attributes=["service.name"] > OTEL_SERVICE_NAME > the variable
    attributes: dict[str, AttributeValue] = {}
    if found := _env(env, "OTEL_RESOURCE_ATTRIBUTES"):
        attributes.update(_pairs(found[1], found[0]))
    if found := _env(env, "OTEL_SERVICE_NAME"):
        attributes["service.name"] = found[1]
    if resource_attributes is not None:
        if not isinstance(resource_attributes, Mapping):
            raise ValueError("resource_attributes: expected a mapping")
        for key, value in resource_attributes.items():
            _check_attribute(key, value, "resource_attributes")
            attributes[key] = list(value) if isinstance(value, tuple) else value
    if service_name is not None:
        if not isinstance(service_name, str) or not service_name.strip():
            raise ValueError(f"service_name={service_name!r}: expected a non-empty string")
        attributes["service.name"] = service_name
    attributes.setdefault("service.name", _UNKNOWN_SERVICE)

    return OTLPSettings(
        endpoint=url,
        protocol=resolved_protocol,
        headers=merged_headers,
        compression=resolved_compression,
        timeout=resolved_timeout,
        insecure=resolved_insecure,
        resource_attributes=attributes,
    )


def _timeout_only(timeout: float | None, environ: Mapping[str, str] | None) -> float:
    """The flush timeout alone (provider mode has no connection of its own to configure)."""
    if timeout is not None:
        return resolve_settings(timeout=timeout, environ={}).timeout
    env = os.environ if environ is None else environ
    if found := _env(env, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        return _timeout_from_env(*found)
    return _DEFAULT_TIMEOUT_S


# -- event -> log record mapping ----------------------------------------------------------------


def occurred_at_ns(occurred_at: str) -> int | None:
    """``occurred_at`` (RFC 3339) as integer nanoseconds since the epoch, exactly; None if bad."""
    try:
        parsed = datetime.fromisoformat(occurred_at)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return ns if ns > 0 else None


def to_any_value(value: Any) -> AnyValue:
    """``value`` as an OTel ``AnyValue`` that the OTLP encoder accepts, losing nothing it can keep.

    JSON-like data passes through; integers beyond int64 and unknown types become strings, tuples
    and sets become lists and mapping keys become strings, so one odd metadata value can never
    make a whole batch unencodable.
    """
    kind = type(value)
    if kind in _PLAIN:  # the common case first: event.to_dict() is JSON-like
        return cast("AnyValue", value)
    if kind is dict:
        return {k if type(k) is str else str(k): to_any_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, str, float, bytes)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, Mapping):
        return {str(k): to_any_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_any_value(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_any_value(v) for v in sorted(value, key=repr)]
    return str(value)


def event_attributes(event: AuditEvent) -> dict[str, AttributeValue]:
    """The log record attributes of ``event`` (semantic conventions, then ``audit.*``).

    Absent values are omitted, never sent as empty.
    """
    attrs: dict[str, AttributeValue] = {}

    def put(key: str, value: str | int | None) -> None:
        if value is not None:
            attrs[key] = value

    actor = event.actor
    put("user.id", actor.id)
    put("user.email", actor.email)
    client = event.client
    if client is not None:
        put("client.address", client.ip)
        put("network.peer.address", client.peer)
        put("user_agent.original", client.user_agent)
    request = event.request
    if request is not None:
        put("http.request.method", request.method)
        put("http.route", request.route)
        put("url.path", request.path)
        put("http.response.status_code", request.status)
    if event.error is not None:
        put("error.type", event.error.type)
    elif event.outcome == "error" and request is not None and request.status is not None:
        put("error.type", str(request.status))  # semconv: the status code when no exception
    put("audit.event.id", event.id)
    put("audit.action", event.action)
    put("audit.outcome", event.outcome)
    put("audit.org.id", event.org_id)
    put("audit.actor.type", actor.type)
    if event.target is not None:
        put("audit.target.type", event.target.type)
        put("audit.target.id", event.target.id)
    if request is not None:
        put("audit.request.id", request.id)
    integrity = event.integrity
    if integrity is not None:  # the whole chain entry is in the body; these make it searchable
        put("audit.integrity.stream", integrity.get("stream"))
        put("audit.integrity.seq", integrity.get("seq"))
        put("audit.integrity.hash", integrity.get("hash"))
    put("audit.schema_version", event.schema_version)
    return attrs


def trace_ids(data: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(trace_id, span_id)`` from the event dict's ``trace`` field, if present and valid."""
    trace = data.get("trace")
    if not isinstance(trace, Mapping):
        return None
    trace_id, span_id = trace.get("trace_id"), trace.get("span_id")
    if not (isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id)):
        return None
    if not (isinstance(span_id, str) and _SPAN_ID.fullmatch(span_id)):
        return None
    ids = int(trace_id, 16), int(span_id, 16)
    return ids if all(ids) else None


# -- OpenTelemetry, imported on first use -------------------------------------------------------


def trace_capture() -> Callable[[], Mapping[str, str] | None] | None:
    """For the middleware: a cheap function returning the active span's ids (W3C hex), or
    None when opentelemetry-api is not installed. Called when a response starts, so a tracing
    middleware inside the audit middleware has its span active."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    current_span = trace.get_current_span

    def capture() -> Mapping[str, str] | None:
        context = current_span().get_span_context()
        if not context.is_valid:
            return None
        return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}

    return capture


def _require_otel() -> None:
    """Import the OpenTelemetry SDK once, or raise ImportError with the install hint."""
    try:
        import opentelemetry._logs
        import opentelemetry.sdk._logs
        import opentelemetry.sdk._logs.export
        import opentelemetry.sdk.resources
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the OTLP audit exporter needs the OpenTelemetry SDK ({exc}): {INSTALL_HINT}"
        ) from exc


class _Fields(NamedTuple):
    """Everything ``Logger.emit`` / ``LogRecord`` take, for one event."""

    timestamp: int
    observed_timestamp: int
    context: Context
    severity_number: SeverityNumber
    severity_text: str
    body: AnyValue
    attributes: dict[str, AttributeValue]
    event_name: str


def _otlp_exporter(settings: OTLPSettings) -> LogRecordExporter:
    """The SDK's OTLP log exporter for ``settings``, every option passed explicitly."""
    try:
        if settings.protocol == "grpc":
            import grpc
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogExporter,
            )

            return GrpcLogExporter(
                endpoint=settings.endpoint,
                insecure=settings.insecure,
                headers=dict(settings.headers) or None,
                timeout=settings.timeout,
                compression=(
                    grpc.Compression.Gzip
                    if settings.compression == "gzip"
                    else grpc.Compression.NoCompression
                ),
            )
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HttpLogExporter,
        )
    except ImportError as exc:
        raise ImportError(
            f"the OTLP audit exporter ({settings.protocol}) needs its OpenTelemetry exporter "
            f"package ({exc}): {INSTALL_HINT}"
        ) from exc
    return HttpLogExporter(
        endpoint=settings.endpoint,
        headers=dict(settings.headers),
        timeout=settings.timeout,
        compression=(
            HttpCompression.Gzip
            if settings.compression == "gzip"
            else HttpCompression.NoCompression
        ),
    )


# -- the exporter -------------------------------------------------------------------------------


class OTLPExporter:
    """Send audit events as OpenTelemetry log events over OTLP (HTTP/protobuf or gRPC).

    Keyword arguments override the standard ``OTEL_*`` variables of ``environ`` (default
    ``os.environ``); see ``docs/otel.md``. Two modes:

    - **own pipeline** (default): records go synchronously through the SDK's OTLP exporter in
      ``export()``; SUCCESS means the collector accepted the batch.
    - **provider**: records are emitted through ``logger_provider`` (or, with
      ``use_global_provider``, the application's global SDK ``LoggerProvider``); delivery is then
      that provider's processors' job and only as reliable as they are. ``use_global_provider``
      defaults to True when a global SDK provider is set and no connection keyword (``endpoint``,
      ``protocol``, ``headers``, ...) was given.

    Raises ImportError (with the install hint) without the ``otel`` extra and ValueError for
    settings that cannot work.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        protocol: str | None = None,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        timeout: float | None = None,
        service_name: str | None = None,
        resource_attributes: Mapping[str, AttributeValue] | None = None,
        insecure: bool | None = None,
        logger_provider: LoggerProvider | None = None,
        use_global_provider: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        _require_otel()
        from opentelemetry import trace
        from opentelemetry._logs import get_logger_provider
        from opentelemetry.sdk._logs import LoggerProvider as SDKLoggerProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        given = {
            "endpoint": endpoint,
            "protocol": protocol,
            "headers": headers,
            "compression": compression,
            "insecure": insecure,
            "service_name": service_name,
            "resource_attributes": resource_attributes,
        }
        connection = [name for name in _CONNECTION_OPTIONS if given[name] is not None]
        provider: LoggerProvider | None = None
        if logger_provider is not None:
            if use_global_provider:
                raise ValueError("pass logger_provider or use_global_provider=True, not both")
            provider = logger_provider
        elif use_global_provider or (use_global_provider is None and not connection):
            current = get_logger_provider()
            if isinstance(current, SDKLoggerProvider):
                provider = current
            elif use_global_provider:
                raise ValueError(
                    "use_global_provider=True, but no OpenTelemetry SDK LoggerProvider is set "
                    "globally (opentelemetry._logs.set_logger_provider)"
                )
        if provider is not None and connection:
            raise ValueError(
                f"{', '.join(connection)} configure this exporter's own OTLP connection and "
                "cannot be combined with an application's LoggerProvider, which delivers through "
                "its own processors"
            )

        self._closed = False
        self._provider = provider
        self._logger: Logger | None = None
        self._otlp: LogRecordExporter | None = None
        self.settings: OTLPSettings | None = None
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._resource: Resource | None = None
        self._resource_pid = 0
        # Records without a trace get an explicitly invalid span: never whatever is ambient.
        self._no_trace: Context = trace.set_span_in_context(trace.INVALID_SPAN)
        if provider is not None:
            self.timeout = _timeout_only(timeout, environ)
            self._logger = provider.get_logger(SCOPE_NAME, __version__)
            return
        self.settings = settings = resolve_settings(
            endpoint=endpoint,
            protocol=protocol,
            headers=headers,
            compression=compression,
            timeout=timeout,
            service_name=service_name,
            resource_attributes=resource_attributes,
            insecure=insecure,
            environ=environ,
        )
        self.timeout = settings.timeout
        self._otlp = _otlp_exporter(settings)

    @property
    def mode(self) -> Literal["otlp", "provider"]:
        """``"otlp"``: own synchronous OTLP connection; ``"provider"``: an app's LoggerProvider."""
        return "provider" if self._provider is not None else "otlp"

    def __repr__(self) -> str:
        if self.settings is None:
            return f"OTLPExporter(provider={self._provider!r})"
        return f"OTLPExporter(endpoint={self.settings.endpoint!r}, {self.settings.protocol})"

    # -- mapping --------------------------------------------------------------------------------

    def _context(self, data: Mapping[str, Any]) -> Context:
        ids = trace_ids(data)
        if ids is None:
            return self._no_trace
        from opentelemetry import trace

        span_context = trace.SpanContext(
            trace_id=ids[0],
            span_id=ids[1],
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context))

    def _fields(self, event: AuditEvent) -> _Fields:
        from opentelemetry._logs import SeverityNumber

        data = event.to_dict()
        observed = time.time_ns()
        timestamp = occurred_at_ns(event.occurred_at)
        if timestamp is None:
            warn_limited(
                "otel-timestamp",
                "audit event %s has an unparsable occurred_at %r; "
                "its OTel timestamp is the export time",
                event.id,
                event.occurred_at,
            )
            timestamp = observed
        level, text = SEVERITY.get(event.outcome, ("INFO", "INFO"))
        return _Fields(
            timestamp=timestamp,
            observed_timestamp=observed,
            context=self._context(data),
            severity_number=SeverityNumber[level],
            severity_text=text,
            body=to_any_value(data),
            attributes=event_attributes(event),
            event_name=event.action,
        )

    def _current_resource(self) -> Resource:
        # service.instance.id is per process: rebuilt after a fork.
        if self._resource is None or self._resource_pid != os.getpid():
            from opentelemetry.sdk.resources import Resource, ServiceInstanceIdResourceDetector
            from opentelemetry.sdk.version import __version__ as sdk_version

            assert self.settings is not None
            base = Resource(
                {
                    "telemetry.sdk.language": "python",
                    "telemetry.sdk.name": "opentelemetry",
                    "telemetry.sdk.version": sdk_version,
                }
            )
            instance = ServiceInstanceIdResourceDetector().detect()
            configured = Resource(dict(self.settings.resource_attributes))
            self._resource = base.merge(instance).merge(configured)
            self._resource_pid = os.getpid()
        return self._resource

    # -- the exporter contract ------------------------------------------------------------------

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Send ``batch``; SUCCESS only once the collector (or the app's provider) took it all."""
        if self._closed:
            return ExportResult.FAILURE
        if self._logger is not None:
            return self._emit(self._logger, batch)
        from opentelemetry._logs import LogRecord
        from opentelemetry.sdk._logs import ReadableLogRecord
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        assert self._otlp is not None
        if not batch:
            return ExportResult.SUCCESS
        resource = self._current_resource()
        records = []
        for event in batch:
            f = self._fields(event)
            record = LogRecord(
                timestamp=f.timestamp,
                observed_timestamp=f.observed_timestamp,
                context=f.context,
                severity_number=f.severity_number,
                severity_text=f.severity_text,
                body=f.body,
                attributes=f.attributes,
                event_name=f.event_name,
            )
            records.append(
                ReadableLogRecord(
                    log_record=record, resource=resource, instrumentation_scope=self._scope
                )
            )
        result = self._otlp.export(records)
        if result is LogRecordExportResult.SUCCESS:
            return ExportResult.SUCCESS
        return ExportResult.FAILURE

    def _emit(self, app_logger: Logger, batch: Sequence[AuditEvent]) -> ExportResult:
        fields = [self._fields(event) for event in batch]
        for f in fields:  # all or nothing: a retried batch must not duplicate its first half
            if not app_logger.enabled(
                context=f.context, severity_number=f.severity_number, event_name=f.event_name
            ):
                warn_limited(
                    "otel-disabled",
                    "the application's OpenTelemetry LoggerProvider does not accept audit "
                    "event %r (no processor, filtered out or SDK disabled); batch not sent",
                    f.event_name,
                )
                return ExportResult.FAILURE
        for f in fields:
            app_logger.emit(
                timestamp=f.timestamp,
                observed_timestamp=f.observed_timestamp,
                context=f.context,
                severity_number=f.severity_number,
                severity_text=f.severity_text,
                body=f.body,
                attributes=f.attributes,
                event_name=f.event_name,
            )
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Own pipeline: True (nothing is buffered; every export already reported its outcome).

        Provider mode: the provider's ``force_flush``, which only says its processors flushed,
        not that the collector received anything.
        """
        provider = self._provider
        if provider is None:
            return True
        flush = getattr(provider, "force_flush", None)
        if flush is None:
            return True
        millis = int(1000 * (self.timeout if timeout is None else max(0.0, timeout)))
        return bool(flush(timeout_millis=millis))

    def shutdown(self, timeout: float | None = None) -> None:
        """Close the OTLP connection. An application's provider is flushed, never shut down."""
        if self._closed:
            return
        self._closed = True
        if self._provider is not None:
            try:
                self.force_flush(timeout)
            except Exception:
                logger.exception("flushing the application's LoggerProvider failed")
            return
        if self._otlp is not None:
            self._otlp.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK


def from_environment(environ: Mapping[str, str] | None = None) -> OTLPExporter:
    """An :class:`OTLPExporter` configured only by ``OTEL_*`` variables (for ``"otlp"``)."""
    return OTLPExporter(environ=environ)
