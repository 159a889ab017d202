"""Trace correlation: the W3C trace context active for a request (OpenTelemetry API, optional)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

__all__ = ["TraceCapture", "trace_capture"]

TraceCapture = Callable[[], Mapping[str, str] | None]


def trace_capture() -> TraceCapture | None:
    """A cheap function returning the current span's ids, or None without opentelemetry-api."""
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
