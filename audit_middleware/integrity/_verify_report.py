"""The verification report: where a problem is (:class:`Location`), what it is
(:class:`Finding`, of one of :data:`FINDING_KINDS` or :data:`NOTICE_KINDS`) and the whole
:class:`VerifyReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "FINDING_KINDS",
    "NOTICE_KINDS",
    "Finding",
    "Location",
    "VerifyReport",
]

#: Every kind of finding (any finding makes ``audit-log verify`` exit 1).
FINDING_KINDS: Final = (
    "modified_event",
    "deleted_event",
    "inserted_event",
    "reordered_events",
    "deleted_object",
    "modified_object",
    "undigested_object",
    "missing_digest",
    "unsigned_digest",
    "bad_signature",
    "unknown_key",
    "broken_chain",
    "chain_head_mismatch",
    "misplaced_event",
    "unreadable_object",
)
#: Every kind of notice (informational: what could not be checked, or was checked weakly).
NOTICE_KINDS: Final = (
    "keys_from_archive",
    "crash_gap",
    "pending_object",
    "pending_events",
    "partial_scope",
    "unattributable_rows",
    "unexpected_file",
    "skipped_lines",
)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: object key, 1-based line (row), stream and seq (each if known)."""

    key: str | None = None
    line: int | None = None
    stream: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.key is not None:
            parts.append(self.key if self.line is None else f"{self.key}:{self.line}")
        if self.stream is not None:
            parts.append(f"stream {self.stream}" + ("" if self.seq is None else f" seq {self.seq}"))
        return ", ".join(parts) or "archive"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (unknown parts are null)."""
        return {"key": self.key, "line": self.line, "stream": self.stream, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or, in :attr:`VerifyReport.notices`, one notice) with its location."""

    kind: str
    message: str
    location: Location = field(default_factory=Location)

    def __str__(self) -> str:
        return f"{self.kind}: {self.location}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "message": self.message, "location": self.location.to_dict()}


@dataclass(slots=True)
class VerifyReport:
    """What a verification found, and how much it checked.

    ``complete`` is True when whole streams were read, so gaps in ``seq`` were checked.
    """

    findings: list[Finding] = field(default_factory=list)
    notices: list[Finding] = field(default_factory=list)
    objects: int = 0
    events: int = 0
    digests: int = 0
    streams: int = 0
    complete: bool = True

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def kinds(self) -> dict[str, int]:
        """The number of findings of each kind found."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "complete": self.complete,
            "checked": {
                "objects": self.objects,
                "events": self.events,
                "digests": self.digests,
                "streams": self.streams,
            },
            "counts": self.kinds(),
            "findings": [f.to_dict() for f in self.findings],
            "notices": [n.to_dict() for n in self.notices],
        }

    def _add(self, kind: str, message: str, location: Location) -> None:
        self.findings.append(Finding(kind, message, location))

    def _note(self, kind: str, message: str, location: Location | None = None) -> None:
        self.notices.append(Finding(kind, message, location or Location()))
