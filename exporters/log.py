"""Structured-log exporter: one JSON line per audit event, through structlog.

By default each event runs through a private structlog processor chain (level, then orjson
rendering; add your own with ``processors=``) and each batch is written to stdout in one
write (to a pipe or socket: in writes of whole lines, each at most ``PIPE_BUF`` bytes, so that
lines written by several processes never interleave), leaving the application's structlog
configuration alone. Pass ``logger=`` (e.g.
``structlog.get_logger("audit")``) to route events through the application's own structlog
configuration instead.
"""

from __future__ import annotations

import os
import select
import stat
import sys
from collections.abc import MutableMapping, Sequence
from typing import IO, Any

import orjson
import structlog
from structlog.typing import Processor

from audit_middleware._batch import batch_lines
from audit_middleware._event import AuditEvent
from audit_middleware._export import ExportResult

__all__ = ["StructlogExporter"]


_TAIL = b',"logger":"audit","level":"info"}\n'
_MAX_TAILS = 1024
_PIPE_BUF = select.PIPE_BUF  # a pipe takes a write this long or shorter whole (POSIX)


def _render(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return orjson.dumps(event_dict, default=str) + b"\n"


class StructlogExporter:
    """Write each event as one JSON log line: the event's JSON (every schema field, in the
    schema's order, as ``event.to_dict()`` gives it) plus ``event`` (the action), ``logger``
    (``"audit"``) and ``level`` (``"info"``).

    ``output`` is ``"stdout"``, ``"stderr"``, a file path (appended to) or a binary file object.
    """

    #: Batches from the pipeline come with each event's JSON line rendered, and batches that
    #: queued up behind a slow write are merged into one (one write for all).
    writes_lines = True
    merges_batches = True

    def __init__(
        self,
        *,
        output: str | IO[bytes] = "stdout",
        logger: Any = None,
        processors: Sequence[Processor] = (),
    ) -> None:
        self._app_logger = logger
        self._output = output
        self._file: IO[bytes] | None = None
        self._pipe_fd = -1  # the file's descriptor when it is a pipe or socket
        self._owns_file = False
        # The chain a structlog BoundLogger would run, called directly: no per-event context
        # copies, and one write per batch instead of one per line.
        self._chain: tuple[Processor, ...] = (
            structlog.processors.add_log_level,
            *processors,
            _render,
        )
        if not isinstance(output, str) and not hasattr(output, "write"):
            raise TypeError("output must be 'stdout', 'stderr', a path or a binary file object")
        self._tails: dict[str, bytes] = {}  # action -> ',"event":"<action>"' + _TAIL

    def _tail(self, action: str) -> bytes:
        """What follows an event's members in its log line (actions repeat: remembered)."""
        tails = self._tails
        if len(tails) >= _MAX_TAILS:
            tails.clear()
        tail = tails[action] = b',"event":' + orjson.dumps(action) + _TAIL
        return tail

    def _target(self) -> IO[bytes]:
        if self._file is None:
            out = self._output
            if out == "stdout":
                self._file = sys.stdout.buffer
            elif out == "stderr":
                self._file = sys.stderr.buffer
            elif isinstance(out, str):
                self._file = open(out, "ab")  # noqa: SIM115 - closed in shutdown()
                self._owns_file = True
            else:
                self._file = out
            self._pipe_fd = _pipe_descriptor(self._file)
        return self._file

    def export(self, batch: Sequence[AuditEvent]) -> ExportResult:
        """Render and write the batch; FAILURE (retried) if the write fails."""
        rendered_lines = batch_lines(batch)
        if self._app_logger is not None:
            for event, line in zip(batch, rendered_lines, strict=True):
                self._app_logger.info(event.action, **orjson.loads(line))
            return ExportResult.SUCCESS
        lines: list[bytes] = []
        chain = self._chain
        if len(chain) == 2:  # no extra processors: what add_log_level + _render would produce
            tails = self._tails
            append = lines.append
            for event, line in zip(batch, rendered_lines, strict=True):
                action = event.action
                append(line[:-2])  # without "}\n"
                append(tails.get(action) or self._tail(action))
        else:
            for event, line in zip(batch, rendered_lines, strict=True):
                data: Any = orjson.loads(line)
                data["event"] = event.action
                data["logger"] = "audit"
                for processor in chain:
                    data = processor(None, "info", data)
                lines.append(data)
        try:
            out = self._target()
            if self._pipe_fd < 0:
                out.write(b"".join(lines))
                out.flush()
            else:
                out.flush()  # anything written to it by other means first
                _write_whole_lines(self._pipe_fd, b"".join(lines))
        except (OSError, ValueError):
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float | None = None) -> bool:
        """Every export already flushed its write."""
        return True

    def shutdown(self, timeout: float | None = None) -> None:
        """Close the file this exporter opened (never stdout/stderr or a caller's file)."""
        if self._owns_file and self._file is not None:
            self._file.close()
            self._file = None


def _pipe_descriptor(file: IO[bytes]) -> int:
    """``file``'s descriptor if it is a pipe or a socket (what a container's or service
    manager's log collector reads), else -1."""
    try:
        fd = file.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):  # no descriptor (e.g. BytesIO), or closed
        return -1
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else -1


def _write_whole_lines(fd: int, data: bytes) -> None:
    """Write ``data`` (lines) to ``fd`` in writes of whole lines of at most ``PIPE_BUF`` bytes,
    which a pipe never splits: lines of other processes writing the same pipe can fall between
    two writes, never inside a line. A line longer than ``PIPE_BUF`` goes in a write of its own
    (a pipe may split that one)."""
    view = memoryview(data)
    size = len(data)
    start = 0
    while start < size:
        end = start + _PIPE_BUF
        if end >= size:
            end = size
        else:
            cut = data.rfind(b"\n", start, end)
            if cut < 0:  # one line longer than PIPE_BUF: to its end
                cut = data.find(b"\n", end)
                end = size if cut < 0 else cut + 1
            else:
                end = cut + 1
        while start < end:
            start += os.write(fd, view[start:end])
