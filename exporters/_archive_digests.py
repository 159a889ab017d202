"""The archive's side of tamper evidence: the chain head kept with the spool, and the signed
digests listing every uploaded object (formats in ``audit_middleware.integrity._digest``).

State files in the spool's writer directory (adopted with it when the process dies):

* ``chain.json``: this process's stream and the last ``seq``/``hash`` it spooled; a restarted
  process continues that stream (together with the positions of the leftover objects).
* ``digest.pending``: one JSON line per uploaded object not yet in a digest, fsynced before the
  object leaves the spool.
* ``digest-heads.json``: per stream, the last digest written (its ``digest_seq``, key, SHA-256).
* ``chain-adopted.json``: the chains of dead writers being taken over, from the moment their
  directories are deleted until :meth:`DigestKeeper.choose_stream` has recorded what it needs.

Adopting a dead writer persists what was read from its directory (these files, fsynced) before
the directory is deleted, so a process killed while adopting leaves nothing undigested.

Writing a digest stores it first, then the heads, then the shortened pending list; a crash in
between can only list an object in two digests (harmless), never in none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from audit_middleware._event import AuditEvent
from audit_middleware._ids import format_timestamp
from audit_middleware._warn import logger, warn_limited
from audit_middleware.integrity._chain import ChainHead, new_stream_id
from audit_middleware.integrity._digest import digest_key, key_object_key, make_digest, sha256_hex
from audit_middleware.integrity._keys import SigningKey
from exporters._spool import Sealed, Spool

if TYPE_CHECKING:
    from exporters.archive import ArchiveExporter

__all__ = ["DigestKeeper"]

_CHAIN = "chain.json"
_PENDING = "digest.pending"
_HEADS = "digest-heads.json"
_ADOPTED = "chain-adopted.json"
_MAX_OUT_OF_ORDER = 50_000


class DigestKeeper:
    """Chain head persistence and digest writing for one :class:`ArchiveExporter`."""

    def __init__(self, exporter: ArchiveExporter, key: SigningKey | None, interval: float) -> None:
        self._exporter = exporter
        self.key = key
        self.interval = interval
        self._lock = threading.Lock()
        self.origin = ChainHead(new_stream_id())
        self._reset_head(self.origin)
        self._dead_heads: dict[str, ChainHead] = {}
        self._dead_complete: dict[str, int] = {}
        self._pending: list[dict[str, Any]] = []
        self._heads: dict[str, dict[str, Any]] = {}
        self._period_start = time.monotonic()
        self._key_published = False
        self.digests_written = 0

    # -- start-up ------------------------------------------------------------------------------

    def start(self, spool: Spool) -> None:
        """A new spool (first use, or after ``fork``): forget the previous process's state."""
        del spool
        self._lock = threading.Lock()  # after fork, the parent's may be held forever
        with self._lock:
            self.origin = ChainHead(new_stream_id())
            self._reset_head(self.origin)
            self._dead_heads = {}
            self._dead_complete = {}
            self._pending = []
            self._heads = {}
            self._period_start = time.monotonic()

    def _reset_head(self, head: ChainHead) -> None:
        self._head = head
        self._complete = head.seq  # every seq up to this one is in the spool (or uploaded)
        self._above: set[int] = set()
        self._saved: tuple[int, int] = (-1, -1)

    def adopt(self, directory: Path) -> None:
        """Merge the chain and digest state a dead writer left in ``directory``, and persist
        it in this writer's directory before the dead one is deleted."""
        chain = _load(directory / _CHAIN)
        if isinstance(chain, dict):
            self._note_chain(chain)
        adopted = _load(directory / _ADOPTED)  # it died while adopting others
        if isinstance(adopted, list):
            for dead in adopted:
                if isinstance(dead, dict):
                    self._note_chain(dead)
        heads = _load(directory / _HEADS)
        if isinstance(heads, dict):
            for stream, head in heads.items():
                mine = self._heads.get(stream)
                if isinstance(head, dict) and (mine is None or head["seq"] > mine["seq"]):
                    self._heads[stream] = head
        try:
            lines = (directory / _PENDING).read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                self._pending.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a line torn by a crash: that object is uploaded again from the spool
        spool = self._exporter._spool
        assert spool is not None
        dead_chains = [
            {"stream": h.stream, "seq": h.seq, "hash": h.hash,
             "complete": self._dead_complete.get(h.stream, h.seq)}
            for h in self._dead_heads.values()
        ]  # fmt: skip
        spool.write_state(_ADOPTED, orjson.dumps(dead_chains), sync=True)
        spool.write_state(_PENDING, _lines(self._pending), sync=True)
        if self._heads:
            spool.write_state(_HEADS, orjson.dumps(self._heads), sync=True)

    def _note_chain(self, chain: dict[str, Any]) -> None:
        """Remember a dead writer's chain state (``stream``, ``seq``, ``hash``, ``complete``)."""
        seq = chain.get("seq")
        if not isinstance(seq, int) or not isinstance(chain.get("stream"), str):
            return
        stream = chain["stream"]
        self._note_head(ChainHead(stream, seq, str(chain["hash"])))
        complete = chain.get("complete", seq)
        if isinstance(complete, int):
            self._dead_complete[stream] = max(complete, self._dead_complete.get(stream, 0))

    def choose_stream(self) -> None:
        """Pick the stream to continue (a dead writer's, if any), declare what a crash may have
        lost, and persist the merged state."""
        spool = self._exporter._spool
        assert spool is not None
        for sealed in spool.sealed():
            if sealed.chain is not None:
                chain = sealed.chain
                self._note_head(ChainHead(chain.stream, chain.last, chain.last_hash))
        for stream, head in sorted(self._dead_heads.items()):
            complete = self._dead_complete.get(stream, head.seq)
            if complete < head.seq:
                # Events the dead process had numbered but not all spooled: some in this range
                # may never reach the archive. Declared (signed) in the stream's next digest so
                # that verify tells a crash from a deletion.
                gap = {"after_seq": complete, "through_seq": head.seq, "declared_by": spool.writer}
                self._pending.append({"stream": stream, "crash_gap": gap})
        if self._dead_heads:
            # Continue the most advanced stream; the others end with their final digests.
            self.origin = max(self._dead_heads.values(), key=lambda h: (h.seq, h.stream))
        # The crash gaps first: once the continued head is saved, it hides them.
        if self._pending:
            spool.write_state(_PENDING, _lines(self._pending), sync=True)
        if self._heads:
            spool.write_state(_HEADS, orjson.dumps(self._heads), sync=True)
        self._reset_head(self.origin)
        self._save_head(spool)
        spool.remove_state(_ADOPTED)  # the gaps and the continued head are recorded now

    def _note_head(self, head: ChainHead) -> None:
        known = self._dead_heads.get(head.stream)
        if known is None or head.seq > known.seq:
            self._dead_heads[head.stream] = head

    # -- spooling and uploading ------------------------------------------------------------

    def spooled(self, batch: Sequence[AuditEvent]) -> None:
        """Events are in the spool: remember how far the chain is complete, and its head."""
        stream = self.origin.stream
        spool = self._exporter._spool
        assert spool is not None
        with self._lock:
            above = self._above
            head_seq, head_hash = self._head.seq, self._head.hash
            complete = self._complete
            for event in batch:
                integrity = event.integrity
                if integrity is None or integrity["stream"] != stream:
                    continue
                seq = integrity["seq"]
                if seq > head_seq:
                    head_seq, head_hash = seq, integrity["hash"]
                if seq == complete + 1:  # the usual case: in chain order
                    complete = seq
                elif seq > complete:
                    above.add(seq)
            while complete + 1 in above:
                above.discard(complete + 1)
                complete += 1
            self._complete = complete
            if head_seq != self._head.seq:
                self._head = ChainHead(stream, head_seq, head_hash)
            if len(above) > _MAX_OUT_OF_ORDER:  # events the pipeline dropped (and counted)
                self._complete = min(above) - 1
                while self._complete + 1 in above:
                    above.discard(self._complete + 1)
                    self._complete += 1
            try:
                self._save_head(spool)
            except OSError:
                warn_limited("archive-chain-head", "audit archive could not save its chain head")

    def _save_head(self, spool: Spool) -> None:
        head, complete = self._head, self._complete
        if (head.seq, complete) == self._saved:
            return
        data = {"stream": head.stream, "seq": head.seq, "hash": head.hash, "complete": complete}
        spool.write_state(_CHAIN, orjson.dumps(data))
        self._saved = (head.seq, complete)

    def uploaded(self, spool: Spool, sealed: Sealed, body: bytes) -> None:
        """``sealed`` is stored: list it for the next digest (durably, before it leaves)."""
        chain = sealed.chain
        if chain is None:
            return
        entry = {
            "key": sealed.key,
            "sha256": sha256_hex(body),
            "bytes": len(body),
            "events": sealed.events,
            "stream": chain.stream,
            "first_seq": chain.first,
            "last_seq": chain.last,
            "last_hash": chain.last_hash,
        }
        with self._lock:
            spool.append_state(_PENDING, orjson.dumps(entry) + b"\n")
            self._pending.append(entry)

    # -- digests -------------------------------------------------------------------------------

    def maybe_write(self, spool: Spool) -> None:
        """Write digests when the period is over (called by the uploader thread)."""
        if self._pending and time.monotonic() - self._period_start >= self.interval:
            self.write(spool)

    def write(self, spool: Spool) -> bool:
        """One digest per stream with uploaded objects not yet listed; True if all stored."""
        with self._lock:
            self._period_start = time.monotonic()
            if not self._pending:
                return True
            store, prefix = self._exporter.store, self._exporter.prefix
            try:
                self._publish_key()
                by_stream: dict[str, dict[str, dict[str, Any]]] = {}
                gaps: dict[str, list[dict[str, Any]]] = {}
                for entry in self._pending:
                    if "crash_gap" in entry:
                        gaps.setdefault(entry["stream"], []).append(entry["crash_gap"])
                        by_stream.setdefault(entry["stream"], {})
                    else:
                        by_stream.setdefault(entry["stream"], {})[entry["key"]] = entry
                for stream, entries in sorted(by_stream.items()):
                    head = self._heads.get(stream)
                    seq = 1 if head is None else int(head["seq"]) + 1
                    previous = None if head is None else {k: head[k] for k in ("key", "sha256")}
                    objects = [
                        {k: v for k, v in e.items() if k != "stream"} for e in entries.values()
                    ]
                    body = make_digest(
                        stream=stream,
                        digest_seq=seq,
                        previous=previous,
                        created_at=format_timestamp(time.time_ns()),
                        objects=objects,
                        crash_gaps=gaps.get(stream, ()),
                        key=self.key,
                    )
                    key = digest_key(prefix, stream, seq)
                    store.put(key, body)
                    self._heads[stream] = {"seq": seq, "key": key, "sha256": sha256_hex(body)}
                    spool.write_state(_HEADS, orjson.dumps(self._heads), sync=True)
                    self._pending = [e for e in self._pending if e["stream"] != stream]
                    spool.write_state(_PENDING, _lines(self._pending), sync=True)
                    self.digests_written += 1
            except Exception as exc:
                warn_limited(
                    "archive-digest",
                    "audit archive could not write a digest to %s (%s); retried later",
                    store.description,
                    type(exc).__name__,
                )
                return False
        if self.key is None:
            warn_limited(
                "archive-unsigned",
                "audit archive digests are unsigned: set AUDIT_LOG_SIGNING_KEY_FILE "
                "(create one with 'audit-log keygen')",
            )
        return True

    def _publish_key(self) -> None:
        if self.key is None or self._key_published:
            return
        public = self.key.public
        key = key_object_key(self._exporter.prefix, public.fingerprint)
        if not self._exporter.store.exists(key):
            self._exporter.store.put(key, public.pem())
            logger.info("audit archive: published digest public key %s", public.fingerprint)
        self._key_published = True


def _load(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _lines(entries: Sequence[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in entries)
