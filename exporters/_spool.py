"""The archive's write-ahead spool: events are on local disk before upload, and leave it only
after the object store acknowledged them.

Layout: ``<spool>/<writer>/`` per process, holding an exclusive ``flock`` on ``<writer>/lock``
for the process lifetime. The open segments (one per partition) accumulate their JSON lines in
a shared journal, ``journal-*.jnl``: each batch, whatever partitions it touches, is one
append and one fsync (:meth:`Spool.batch`), each record naming its segment and object key.
Sealing reads a segment's records back and compresses them into a ``*.obj`` file named for
its final object key; a journal is deleted once every segment with records in it is sealed,
and the uploader removes a ``*.obj`` once stored. A directory whose lock can be taken belongs
to a dead process (crash, SIGKILL, a replaced worker): its files are adopted, the segments in
its journals (or its ``open-*.seg`` files, the per-partition layout of earlier versions)
sealed, and uploaded under their original keys, so nothing is lost or renamed.

Without a directory the same API keeps everything in memory (lost if the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

__all__ = ["ChainSpan", "Sealed", "Spool", "SpoolClosed", "SpoolFull"]

_MAGIC = b"AUDITSPOOL1\n"
_JOURNAL_MAGIC = b"AUDITJOURNAL1\n"
#: A journal takes no more batches past this size; it is deleted once its segments are sealed.
_JOURNAL_ROTATE: Final = 64 << 20
#: Journals kept at most: before one more is started, the open segments with records in the
#: oldest are sealed early, so that a quiet partition cannot keep old journals on disk.
_MAX_JOURNALS: Final = 4


class SpoolFull(Exception):
    """The spool is at its byte cap."""


class SpoolClosed(OSError):
    """The spool was closed (its exporter shut down or handed it over): nothing is written,
    sealed or handed out for upload any more; its files stay for whoever adopts them."""


@dataclass(frozen=True, slots=True)
class ChainSpan:
    """The hash-chain positions of a run of lines: one stream, ``first``..``last`` seq."""

    stream: str
    first: int
    last: int
    last_hash: str

    def merge(self, other: ChainSpan | None) -> ChainSpan:
        """The span covering both (``other`` is assumed to be of the same stream)."""
        if other is None:
            return self
        newest = self if self.last >= other.last else other
        return ChainSpan(self.stream, min(self.first, other.first), newest.last, newest.last_hash)


@dataclass
class Sealed:
    """A finished object waiting for upload."""

    key: str
    size: int
    path: Path | None = None
    body: bytes | None = None
    events: int = -1
    chain: ChainSpan | None = None
    claimed: bool = False  # an uploader is storing it (see Spool.claim)


class _Journal:
    """One append-only file of records ``#[segment, key, length]\n`` + that many bytes of lines."""

    __slots__ = ("committed", "end", "fd", "live", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _write_all(self.fd, _JOURNAL_MAGIC)
            os.fsync(self.fd)
            _fsync_dir(path.parent)
        except OSError:
            os.close(self.fd)
            path.unlink(missing_ok=True)
            raise
        self.committed = self.end = len(_JOURNAL_MAGIC)  # end: with the uncommitted records
        self.live: set[int] = set()  # open segments with records here

    def read(self, offset: int, size: int) -> bytes:
        parts = []
        while size > 0:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                raise OSError(f"spool journal {self.path} is shorter than its records")
            parts.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(parts)


@dataclass
class _Open:
    """An accumulating segment of one partition."""

    key: str
    events: int = 0
    size: int = 0
    created: float = 0.0
    path: Path | None = None  # an adopted segment file of the per-partition layout
    lines: list[bytes] = field(default_factory=list)  # without a directory
    chain: ChainSpan | None = None
    unsorted: bool = False  # lines were appended out of seq order: sort them when sealing
    ident: int = 0
    chunks: list[tuple[_Journal, int, int]] = field(default_factory=list)  # (journal, at, size)


@dataclass
class _Undo:
    """A segment as it was before an uncommitted append (restored if the batch fails)."""

    partition: str
    segment: _Open
    created: bool
    events: int
    size: int
    chunks: int
    lines: int
    chain: ChainSpan | None
    unsorted: bool
    used: int  # the spool's bytes


class Spool:
    """Durable (with a directory) or in-memory storage of segments and sealed objects."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None,
        *,
        max_bytes: int,
        writer: str,
        encode: Callable[[bytes], bytes] = lambda raw: gzip.compress(raw, mtime=0),
    ) -> None:
        self.encode = encode
        self.directory = None if directory is None else Path(directory)
        self.max_bytes = max_bytes
        self.writer = writer
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._sealed: list[Sealed] = []
        self._sealing = 0  # segments being compressed by seal(), outside _lock
        self._used = 0
        self._lock_file: IO[bytes] | None = None
        self._dir: Path | None = None
        self._memory_state: dict[str, bytes] = {}
        self._closed = False
        # Batches: appends are staged in _pending and written, once, when the outermost batch
        # ends; every change to the open segments happens under _batch_lock.
        self._batch_lock = threading.RLock()
        self._depth = 0
        self._pending: list[bytes] = []
        self._undo: list[_Undo] = []
        self._journal: _Journal | None = None  # where appends go
        self._journals: list[_Journal] = []  # every journal with live segments, and the current
        self._journal_ids = itertools.count(1)
        self._segment_ids = itertools.count(1)
        self._object_ids = itertools.count(1)
        if self.directory is not None:
            # The directory appears under its final name only once locked, so a process adopting
            # orphans at the same moment can never mistake a starting writer for a dead one.
            self._dir = self.directory / writer
            staging = self.directory / f".{writer}.starting"
            staging.mkdir(parents=True)
            self._lock_file = open(staging / "lock", "wb")  # noqa: SIM115 - held for life
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(staging, self._dir)

    @property
    def durable(self) -> bool:
        return self._dir is not None

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    # -- writing -------------------------------------------------------------------------------

    def open_events(self, partition: str) -> int:
        """Events in the partition's open segment (0 when there is none)."""
        with self._lock:
            segment = self._open.get(partition)
            return 0 if segment is None else segment.events

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group appends (and seals) into one durable write: the journal is appended and
        fsynced once, when the outermost batch ends. If the batch raises, or that write fails
        (the error is raised), its uncommitted appends are undone, as if never made."""
        with self._batch_lock:
            self._depth += 1
            try:
                yield
            except BaseException:
                if self._depth == 1:
                    with self._lock:
                        self._rollback(abandon=False)
                raise
            else:
                if self._depth == 1:
                    with self._lock:
                        self._commit()
            finally:
                self._depth -= 1

    def append(
        self,
        partition: str,
        new_key: Callable[[], str],
        lines: list[bytes],
        now: float,
        chain: ChainSpan | None = None,
    ) -> _Open:
        """Append JSON lines to the partition's open segment (created, keyed by ``new_key()``,
        when there is none); ``chain`` is where the lines stand in their hash chain. Durable
        when the enclosing :meth:`batch` ends (at once outside of one)."""
        with self.batch(), self._lock:
            return self._append(partition, new_key, lines, now, chain)

    def _append(
        self,
        partition: str,
        new_key: Callable[[], str],
        lines: list[bytes],
        now: float,
        chain: ChainSpan | None,
    ) -> _Open:
        if self._closed:
            raise SpoolClosed("the spool is closed")
        size = sum(map(len, lines))  # (joined once, with the whole batch, when it is written)
        journal = None if self._dir is None else self._current_journal()
        segment = self._open.get(partition)
        created = segment is None
        if segment is None:
            segment = _Open(key=new_key(), created=now, ident=next(self._segment_ids))
        header = b""
        if journal is not None:
            header = b"#" + orjson.dumps([segment.ident, segment.key, size]) + b"\n"
        if self._used + len(header) + size > self.max_bytes:
            raise SpoolFull(f"spool at its cap of {self.max_bytes} bytes")
        if created:
            self._open[partition] = segment
        self._undo.append(
            _Undo(
                partition,
                segment,
                created,
                segment.events,
                segment.size,
                len(segment.chunks),
                len(segment.lines),
                segment.chain,
                segment.unsorted,
                self._used,
            )
        )
        if journal is not None:
            self._pending.append(header)
            self._pending += lines
            segment.chunks.append((journal, journal.end + len(header), size))
            journal.end += len(header) + size
            journal.live.add(segment.ident)
        else:
            segment.lines.append(b"".join(lines))
        segment.events += len(lines)
        segment.size += size
        self._used += len(header) + size  # journals count as they are on disk
        if chain is not None:
            if segment.chain is not None and chain.first <= segment.chain.last:
                segment.unsorted = True
            segment.chain = chain.merge(segment.chain)
        return segment

    def _current_journal(self) -> _Journal:
        journal = self._journal
        if journal is None:  # nothing is staged (hold _lock)
            assert self._dir is not None
            assert not self._pending
            while len(self._journals) >= _MAX_JOURNALS:
                oldest = self._journals[0]
                for partition in [p for p, s in self._open.items() if s.ident in oldest.live]:
                    self._seal(self._open.pop(partition))
                if self._journals and self._journals[0] is oldest:
                    break  # not released: never the case, as no record in it is staged
            journal = _Journal(self._dir / f"journal-{next(self._journal_ids):06d}.jnl")
            self._journal = journal
            self._journals.append(journal)
        return journal

    def _commit(self) -> None:
        """Write and fsync the staged records (hold ``_lock``); undo them if that fails."""
        if self._closed and self._pending:  # closed mid-batch: its journal's descriptor is gone
            self._rollback(abandon=False)
            raise SpoolClosed("the spool was closed before the batch was written")
        if self._pending:
            journal = self._journal
            assert journal is not None
            try:
                _write_all(journal.fd, b"".join(self._pending))
                os.fsync(journal.fd)
            except OSError:
                self._rollback(abandon=True)
                raise
            journal.committed = journal.end
            self._pending.clear()
            if journal.end >= _JOURNAL_ROTATE:
                self._journal = None
                self._release_journals()
        self._undo.clear()

    def _rollback(self, *, abandon: bool) -> None:
        """Undo the staged appends (hold ``_lock``); ``abandon`` the current journal, whose end
        may hold part of a failed write, for a new one."""
        for undo in reversed(self._undo):
            segment = undo.segment
            for journal, _, _ in segment.chunks[undo.chunks :]:
                if all(j is not journal for j, _, _ in segment.chunks[: undo.chunks]):
                    journal.live.discard(segment.ident)
            self._used = undo.used
            del segment.chunks[undo.chunks :]
            del segment.lines[undo.lines :]
            segment.events, segment.size = undo.events, undo.size
            segment.chain, segment.unsorted = undo.chain, undo.unsorted
            if undo.created and self._open.get(undo.partition) is segment:
                del self._open[undo.partition]
        self._undo.clear()
        self._pending.clear()
        current = self._journal
        if current is not None:
            current.end = current.committed
            if abandon:  # part of the failed write may be in it: cut it off, write elsewhere
                self._journal = None
                with contextlib.suppress(OSError):
                    os.ftruncate(current.fd, current.committed)
        self._release_journals()

    def _release_journals(self) -> None:
        """Delete the journals no open segment needs any more (hold ``_lock``)."""
        for journal in list(self._journals):
            if journal.live or (journal is self._journal and self._pending):
                continue
            if journal is self._journal:
                self._journal = None
            self._journals.remove(journal)
            os.close(journal.fd)
            journal.path.unlink(missing_ok=True)
            self._used -= journal.committed - len(_JOURNAL_MAGIC)

    def seal(self, partition: str) -> Sealed | None:
        """Compress the partition's open segment into an object ready for upload (inside a
        batch, what the batch staged is written first).

        The compression runs without the lock the uploader and the counters take, so objects
        already sealed are uploaded meanwhile; appends wait, as they would for the lock. The
        segment counts as pending throughout. If the spool is closed meanwhile, the segment's
        records stay in their journal, for whoever adopts the directory."""
        with self._batch_lock:
            with self._lock:
                if self._closed or partition not in self._open:
                    return None
                self._commit()
                segment = self._open.pop(partition)
                content = self._content(segment)
                if content is None:
                    return None
                raw, chain, events = content
                self._sealing += 1
            try:
                body = self.encode(raw)
            except BaseException:
                with self._lock:
                    self._sealing -= 1
                raise
            with self._lock:
                self._sealing -= 1
                if self._closed:
                    return None
                return self._keep(segment, chain, events, body)

    def seal_all(self, each: Callable[[Sealed], object] | None = None) -> list[Sealed]:
        """Seal every open segment, calling ``each`` with every object as soon as it is sealed."""
        with self._lock:
            partitions = list(self._open)
        sealed = []
        for partition in partitions:
            one = self.seal(partition)
            if one is not None:
                sealed.append(one)
                if each is not None:
                    each(one)
        return sealed

    def open_segments(self) -> list[tuple[str, _Open]]:
        with self._lock:
            return [] if self._closed else list(self._open.items())

    def _seal(self, segment: _Open, *, adopted: bool = False) -> Sealed | None:
        """Compress ``segment`` into an object ready for upload (hold ``_lock``)."""
        content = self._content(segment, adopted=adopted)
        if content is None:
            return None
        raw, chain, events = content
        return self._keep(segment, chain, events, self.encode(raw))

    def _content(
        self, segment: _Open, *, adopted: bool = False
    ) -> tuple[bytes, ChainSpan | None, int] | None:
        """``(lines, chain span, event count)`` of ``segment`` (hold ``_lock``); None, with the
        segment forgotten, when it holds no complete line."""
        if segment.path is not None:
            raw = _payload(segment.path)
        elif segment.chunks:
            raw = b"".join(journal.read(at, size) for journal, at, size in segment.chunks)
        else:
            raw = b"".join(segment.lines)
        raw = raw[: raw.rfind(b"\n") + 1]  # a line torn by a crash mid-append is dropped
        # A journal's bytes count until the journal is deleted; other lines until sealed.
        held = 0 if segment.chunks else segment.size
        if not raw:  # created by a process that died before its first line: nothing to store
            self._used -= held
            self._forget(segment)
            return None
        chain = segment.chain
        if adopted or segment.unsorted:  # rare: read the chain positions from the lines
            raw, chain = _in_chain_order(raw)
        return raw, chain, raw.count(b"\n")

    def _keep(self, segment: _Open, chain: ChainSpan | None, events: int, body: bytes) -> Sealed:
        """Store ``body``, the encoded lines of ``segment``, as an object waiting for upload,
        and forget the segment (hold ``_lock``)."""
        held = 0 if segment.chunks else segment.size
        self._used += len(body) - held
        if self._dir is None:
            sealed = Sealed(segment.key, len(body), body=body, events=events, chain=chain)
        else:
            name = f"obj-{next(self._object_ids):06d}-{os.urandom(4).hex()}.obj"
            path = self._dir / name
            _write_new(path, _header(segment.key, events, chain) + b"\n" + body)
            _fsync_dir(self._dir)
            self._forget(segment)
            sealed = Sealed(segment.key, len(body), path=path, events=events, chain=chain)
        self._sealed.append(sealed)
        return sealed

    def _forget(self, segment: _Open) -> None:
        """A sealed (or empty) segment's files are no longer needed (hold ``_lock``)."""
        if segment.path is not None:
            segment.path.unlink()
        if segment.chunks:
            for journal, _, _ in segment.chunks:
                journal.live.discard(segment.ident)
            self._release_journals()

    # -- uploading -----------------------------------------------------------------------------

    def claim(self) -> Sealed | None:
        """The oldest object no uploader has claimed, now claimed by the caller, who then
        calls :meth:`done` once it is stored or :meth:`release` if it was not; None when
        there is none, or once closed."""
        with self._lock:
            if self._closed:
                return None
            for sealed in self._sealed:
                if not sealed.claimed:
                    sealed.claimed = True
                    return sealed
            return None

    def release(self, sealed: Sealed) -> None:
        """``sealed`` was not stored: any uploader may claim it again."""
        with self._lock:
            sealed.claimed = False

    def pending(self) -> int:
        """Objects not uploaded yet, those being sealed included."""
        with self._lock:
            return len(self._sealed) + self._sealing

    def body(self, sealed: Sealed) -> bytes:
        if sealed.body is not None:
            return sealed.body
        assert sealed.path is not None
        return _payload(sealed.path)

    def done(self, sealed: Sealed) -> None:
        """The object store acknowledged ``sealed``: forget it."""
        with self._lock:
            self._sealed.remove(sealed)
            self._used -= sealed.size
        if sealed.path is not None:
            sealed.path.unlink(missing_ok=True)

    # -- recovery ------------------------------------------------------------------------------

    def adopt_orphans(self, on_dead: Callable[[Path], None] | None = None) -> int:
        """Take over the files of dead writers (and seal their open segments); return a count.

        ``on_dead(directory)`` is called for each dead writer's directory before its remaining
        files (state the caller keeps there) are deleted."""
        if self.directory is None or self._dir is None:
            return 0
        adopted = 0
        for other in sorted(self.directory.iterdir()):
            if other == self._dir or other.name.startswith(".") or not other.is_dir():
                continue
            with _dead_writer(other) as dead:
                if not dead:
                    continue
                # A segment sealed before the crash may still have records in a journal that
                # other segments kept: its object is adopted below, not sealed a second time.
                objects = {_header_of(path)[0] for path in other.glob("*.obj")}
                adopted += self._adopt_journals(other, objects)
                for path in sorted(other.glob("*.seg")) + sorted(other.glob("*.obj")):
                    target = self._dir / f"{other.name}-{path.name}"
                    os.replace(path, target)
                    key, events, chain = _header_of(target)
                    if target.suffix == ".seg":
                        size = target.stat().st_size
                        with self._lock:
                            self._used += size
                            self._seal(_Open(key=key, size=size, path=target), adopted=True)
                    else:
                        size = target.stat().st_size
                        with self._lock:
                            self._used += size
                            self._sealed.append(
                                Sealed(key, size, path=target, events=events, chain=chain)
                            )
                    adopted += 1
                if on_dead is not None:
                    on_dead(other)
                for leftover in other.iterdir():
                    leftover.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    other.rmdir()
        return adopted

    def _adopt_journals(self, other: Path, sealed_keys: set[str]) -> int:
        """Seal the segments in a dead writer's journals into objects here, but for those whose
        key is in ``sealed_keys``; return a count."""
        segments: dict[int, tuple[str, list[bytes]]] = {}
        for path in sorted(other.glob("*.jnl")):
            for ident, key, data in _journal_records(path.read_bytes()):
                if key not in sealed_keys:
                    segments.setdefault(ident, (key, []))[1].append(data)
        for key, parts in segments.values():
            raw = b"".join(parts)
            with self._lock:
                self._used += len(raw)
                self._seal(_Open(key=key, size=len(raw), lines=[raw]), adopted=True)
        return len(segments)

    def sealed(self) -> list[Sealed]:
        """The objects waiting for upload."""
        with self._lock:
            return list(self._sealed)

    # -- small state files (kept with the spool, adopted with it) -------------------------------

    def read_state(self, name: str) -> bytes | None:
        """The content of state file ``name`` (None when absent or without a directory)."""
        if self._dir is None:
            return self._memory_state.get(name)
        try:
            return (self._dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_state(self, name: str, data: bytes, *, sync: bool = False) -> None:
        """Replace state file ``name`` atomically (fsynced with ``sync``)."""
        if self._dir is None:
            self._memory_state[name] = data
            return
        path = self._dir / name
        tmp = path.with_name(f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove_state(self, name: str) -> None:
        """Delete state file ``name`` if it exists."""
        if self._dir is None:
            self._memory_state.pop(name, None)
            return
        (self._dir / name).unlink(missing_ok=True)

    def append_state(self, name: str, data: bytes) -> None:
        """Append ``data`` to state file ``name``, fsynced."""
        if self._dir is None:
            self._memory_state[name] = self._memory_state.get(name, b"") + data
            return
        with open(self._dir / name, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """Release the directory (its journals stay, for whoever adopts it). A thread still
        using the spool afterwards (an export or upload outliving a shutdown's deadline) gets
        :class:`SpoolClosed` or nothing to do, never a descriptor closed here."""
        with self._lock:
            self._closed = True
            for journal in self._journals:
                os.close(journal.fd)
            self._journals.clear()
            self._journal = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


@contextlib.contextmanager
def _dead_writer(directory: Path) -> Iterator[bool]:
    """Yield True while holding the lock of a writer directory whose owner is gone."""
    lock_path = directory / "lock"
    try:
        f = open(lock_path, "ab")  # noqa: SIM115
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # alive: its owner holds the lock
            return
        yield True
    finally:
        f.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _journal_records(data: bytes) -> Iterator[tuple[int, str, bytes]]:
    """The records of a journal's bytes, up to the first one a crash left incomplete."""
    if not data.startswith(_JOURNAL_MAGIC):
        return
    at = len(_JOURNAL_MAGIC)
    while data.startswith(b"#", at):
        eol = data.find(b"\n", at)
        if eol < 0:
            return
        try:
            fields: Any = orjson.loads(data[at + 1 : eol])
            ident, key, size = fields
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return
        if type(ident) is not int or type(key) is not str or type(size) is not int or size < 0:
            return
        end = eol + 1 + size
        if end > len(data):
            return
        yield ident, key, data[eol + 1 : end]
        at = end


def _write_new(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _split(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"not a spool file: {path}")
    header, _, payload = data[len(_MAGIC) :].partition(b"\n")
    return header.decode(), payload


def _header(key: str, events: int, chain: ChainSpan | None) -> bytes:
    fields = [key, str(events)]
    if chain is not None:
        fields += [chain.stream, str(chain.first), str(chain.last), chain.last_hash]
    return "\t".join(fields).encode()


def _header_of(path: Path) -> tuple[str, int, ChainSpan | None]:
    """The object key (and, for sealed objects, the event count and chain span) a spool file
    starts with."""
    fields = _split(path)[0].split("\t")
    events = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else -1
    chain = None
    if len(fields) == 6 and fields[3].isdigit() and fields[4].isdigit():
        chain = ChainSpan(fields[2], int(fields[3]), int(fields[4]), fields[5])
    return fields[0], events, chain


def _in_chain_order(raw: bytes) -> tuple[bytes, ChainSpan | None]:
    """JSON lines sorted by their ``integrity.seq`` (stable; lines without one first), and
    their span. Used only for adopted or out-of-order segments."""
    keyed: list[tuple[int, bytes]] = []
    span: ChainSpan | None = None
    for line in raw.splitlines(keepends=True):
        seq = 0
        try:
            integrity = orjson.loads(line).get("integrity")
        except (orjson.JSONDecodeError, AttributeError):
            integrity = None
        if isinstance(integrity, dict) and isinstance(integrity.get("seq"), int):
            seq = integrity["seq"]
            here = ChainSpan(str(integrity.get("stream")), seq, seq, str(integrity.get("hash")))
            span = here.merge(span) if span is None or span.stream == here.stream else span
        keyed.append((seq, line))
    keyed.sort(key=lambda item: item[0])
    return b"".join(line for _, line in keyed), span


def _payload(path: Path) -> bytes:
    return _split(path)[1]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
