"""Signed digests: parsing, signatures, the ``digest_seq``/``previous_digest`` chain, the chain
heads and crash gaps they declare, and each event object against the digest entries listing
it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from audit_middleware.integrity._digest import (
    INTEGRITY_DIR,
    parse_digest,
    sha256_hex,
    signature_status,
)
from audit_middleware.integrity._keys import PublicKey
from audit_middleware.integrity._verify_chains import Chains, is_hex
from audit_middleware.integrity._verify_report import Location, VerifyReport

__all__ = ["DigestChecks", "ObjectSummary"]


@dataclass(slots=True)
class _Listed:
    digest_key: str
    stream: str
    entry: Mapping[str, Any]
    seen: bool = False


@dataclass(slots=True)
class ObjectSummary:
    """One stream's events in one object: what a digest entry describes."""

    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_hash: bytes = b""


class DigestChecks:
    """Each stream's signed digests, checked one by one (:meth:`check`), then their links
    (:meth:`check_links`); the object entries they list are kept in :attr:`listed`, for
    :meth:`compare` against the objects read."""

    def __init__(
        self,
        report: VerifyReport,
        chains: Chains,
        display: Callable[[str], str],
        *,
        whole: bool,
    ) -> None:
        self.report = report
        self._chains = chains
        self._display = display
        self._whole = whole
        #: relative object key -> the digest entries listing it
        self.listed: dict[str, list[_Listed]] = {}
        #: (stream, digest_seq) -> (the stored digest's SHA-256, its link or None if unreadable)
        self._stored: dict[tuple[str, int], tuple[str, Mapping[str, Any] | None]] = {}

    def check(
        self,
        name: str,
        n: int,
        key: str,
        body: bytes | Exception,
        keys: Mapping[str, PublicKey],
    ) -> None:
        """Check digest ``n`` of stream ``name`` (``body``: its bytes, or the error reading it)."""
        report = self.report
        stored = self._stored
        where = Location(key, None, name)
        if isinstance(body, Exception):
            report._add("unreadable_object", f"cannot read the digest ({body})", where)
            stored[name, n] = ("", None)
            return
        report.digests += 1
        try:
            doc = parse_digest(body)
        except ValueError as exc:
            report._add("unreadable_object", f"not a digest: {exc}", where)
            stored[name, n] = (sha256_hex(body), None)
            return
        # keep only the link: the object entries are kept in self.listed
        stored[name, n] = (sha256_hex(body), {"previous_digest": doc.get("previous_digest")})
        if doc.get("stream") != name or doc.get("digest_seq") != n:
            report._add(
                "missing_digest",
                f"stored as digest {n} of stream {name} but it is digest "
                f"{doc.get('digest_seq')!r} of stream {doc.get('stream')!r}: the genuine "
                "digest was replaced",
                where,
            )
        status = signature_status(doc, keys)
        if status == "unsigned":
            report._add("unsigned_digest", "the digest carries no signature", where)
        elif status == "unknown-key":
            fingerprint = doc.get("signing", {}).get("key_fingerprint")
            report._add(
                "unknown_key",
                f"signed by key {fingerprint}, which is not a trusted key",
                where,
            )
        elif status == "bad-signature":
            report._add("bad_signature", "the signature does not match the digest (altered)", where)
        self._record_digest(name, key, doc, trusted=status == "valid")

    def check_links(self, digests: dict[str, dict[int, str]]) -> None:
        """Check each stream's ``digest_seq`` contiguity and ``previous_digest`` links."""
        for name in sorted(digests):
            self._check_digest_links(name, digests[name], self._stored)

    def _record_digest(self, name: str, key: str, doc: Mapping[str, Any], *, trusted: bool) -> None:
        state = self._chains.stream(name)
        gaps = doc.get("crash_gaps") or []
        for gap in gaps if isinstance(gaps, list) and trusted else []:
            after = gap.get("after_seq") if isinstance(gap, Mapping) else None
            through = gap.get("through_seq") if isinstance(gap, Mapping) else None
            if type(after) is int and type(through) is int and 0 <= after < through:
                state.crash_gaps.append((after + 1, through, key))
        head = doc.get("chain_head")
        if isinstance(head, Mapping) and _is_seq(head.get("seq")) and is_hex(head.get("hash")):
            digest = bytes.fromhex(head["hash"])
            state.heads.append((head["seq"], digest, key))
            state.refs.setdefault(head["seq"], set()).add(digest)
            state.max_digested = max(state.max_digested, head["seq"])
        entries = doc.get("objects")
        if not isinstance(entries, list):
            entries = []
            self.report._add(
                "unreadable_object", "the digest has no object list", Location(key, None, name)
            )
        for index, entry in enumerate(entries, 1):
            if not _valid_entry(entry):
                self.report._add(
                    "unreadable_object",
                    f"object entry {index} of the digest is malformed",
                    Location(key, None, name),
                )
                continue
            state.refs.setdefault(entry["last_seq"], set()).add(bytes.fromhex(entry["last_hash"]))
            state.max_digested = max(state.max_digested, entry["last_seq"])
            rel = _relative(entry["key"])
            self.listed.setdefault(rel, []).append(_Listed(key, name, entry))

    def _check_digest_links(
        self,
        name: str,
        present: dict[int, str],
        stored: dict[tuple[str, int], tuple[str, Mapping[str, Any] | None]],
    ) -> None:
        report = self.report
        numbers = sorted(present)
        expected = 1 if self._whole else numbers[0]
        for n in numbers:
            key = self._display(present[n])
            if n > expected:
                report._add(
                    "missing_digest",
                    f"digest {_span(expected, n - 1)} of the stream "
                    f"{'is' if n - 1 == expected else 'are'} missing",
                    Location(key, None, name),
                )
            expected = n + 1
            _, doc = stored[name, n]
            if doc is None:
                continue
            link = doc.get("previous_digest")
            before = stored.get((name, n - 1))
            if n == 1:
                if link is not None:
                    report._add(
                        "missing_digest",
                        "the stream's first digest names a previous digest",
                        Location(key, None, name),
                    )
                continue
            if before is None:
                continue  # already reported as missing, or out of scope
            if (
                not isinstance(link, Mapping)
                or not isinstance(link.get("key"), str)
                or _relative(link["key"]) != present[n - 1]
                or link.get("sha256") != before[0]
            ):
                report._add(
                    "missing_digest",
                    f"previous_digest does not match the stored digest {n - 1} (it was "
                    "replaced or altered)",
                    Location(key, None, name),
                )

    # -- event objects ---------------------------------------------------------------------------

    def compare(
        self,
        key: str,
        sha: str,
        body: bytes | Exception,
        item: _Listed,
        summary: ObjectSummary | None,
    ) -> None:
        """Check an object (its SHA-256 and bytes, or the error reading it) against one digest
        entry listing it; ``summary``: the object's events of the entry's stream."""
        entry = item.entry
        where = Location(key, None, item.stream)
        if isinstance(body, Exception):
            return
        if sha != entry["sha256"] or len(body) != entry["bytes"]:
            self.report._add(
                "modified_object",
                f"the object's bytes differ from digest {item.digest_key} (sha256 {sha[:16]}..."
                f", {len(body)} bytes; signed: {str(entry['sha256'])[:16]}..., "
                f"{entry['bytes']} bytes)",
                where,
            )
            return
        summary = summary or ObjectSummary()
        actual = (summary.events, summary.first_seq, summary.last_seq, summary.last_hash.hex())
        signed = (entry["events"], entry["first_seq"], entry["last_seq"], entry["last_hash"])
        if entry["events"] < 0:  # a writer that could not count them (an old spool file)
            actual = (entry["events"], *actual[1:])
        if actual != signed:
            self.report._add(
                "modified_object",
                f"digest {item.digest_key} describes events/first/last seq {signed[:3]} but the "
                f"object holds {actual[:3]}",
                where,
            )


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def _is_seq(value: object) -> bool:
    return type(value) is int and value >= 1


def _valid_entry(entry: object) -> bool:
    return (
        isinstance(entry, Mapping)
        and isinstance(entry.get("key"), str)
        and is_hex(entry.get("sha256"))
        and is_hex(entry.get("last_hash"))
        and all(type(entry.get(k)) is int for k in ("bytes", "events", "first_seq", "last_seq"))
    )


def _relative(key: str) -> str:
    """A stored key without the archive prefix (from its ``org_id=`` or ``_integrity`` part on),
    so digests still match after an archive is copied under another prefix."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == INTEGRITY_DIR or (parts[i].startswith("org_id=") and i + 2 < len(parts)):
            return "/".join(parts[i:])
    return key
