"""The archive's write-ahead spool: events are on local disk before upload, and leave it only
after the object store acknowledged them.

Layout: ``<spool>/<writer>/`` per process, holding an exclusive ``flock`` on ``<writer>/lock``
for the process lifetime. ``open-*.seg`` files accumulate the JSON lines of one partition
(appended and fsynced per batch); sealing compresses one into a ``*.obj`` file named for its
final object key; the uploader removes a ``*.obj`` once stored. A directory whose lock can be
taken belongs to a dead process (crash, SIGKILL, a replaced worker): its files are adopted,
open segments sealed, and uploaded under their original keys, so nothing is lost or renamed.

Without a directory the same API keeps everything in memory (lost if the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

__all__ = ["ChainSpan", "Sealed", "Spool", "SpoolFull"]

_MAGIC = b"AUDITSPOOL1\n"


class SpoolFull(Exception):
    """The spool is at its byte cap."""


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


@dataclass
class _Open:
    """An accumulating segment of one partition."""

    key: str
    events: int = 0
    size: int = 0
    created: float = 0.0
    path: Path | None = None
    lines: list[bytes] = field(default_factory=list)
    chain: ChainSpan | None = None
    unsorted: bool = False  # lines were appended out of seq order: sort them when sealing


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
        self._used = 0
        self._lock_file: IO[bytes] | None = None
        self._dir: Path | None = None
        self._memory_state: dict[str, bytes] = {}
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

    def append(
        self,
        partition: str,
        new_key: Callable[[], str],
        lines: list[bytes],
        now: float,
        chain: ChainSpan | None = None,
    ) -> _Open:
        """Append JSON lines to the partition's open segment (created, keyed by ``new_key()``,
        when there is none); ``chain`` is where the lines stand in their hash chain."""
        data = b"".join(lines)
        with self._lock:
            if self._used + len(data) > self.max_bytes:
                raise SpoolFull(f"spool at its cap of {self.max_bytes} bytes")
            segment = self._open.get(partition)
            if segment is None:
                key = new_key()
                segment = _Open(key=key, created=now)
                if self._dir is not None:
                    segment.path = self._dir / f"open-{len(self._open)}-{os.urandom(4).hex()}.seg"
                    _write_new(segment.path, key.encode() + b"\n")
                self._open[partition] = segment
            if segment.path is not None:
                with open(segment.path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                segment.lines.append(data)
            segment.events += len(lines)
            segment.size += len(data)
            self._used += len(data)
            if chain is not None:
                if segment.chain is not None and chain.first <= segment.chain.last:
                    segment.unsorted = True
                segment.chain = chain.merge(segment.chain)
            return segment

    def seal(self, partition: str) -> Sealed | None:
        """Compress the partition's open segment into an object ready for upload."""
        with self._lock:
            segment = self._open.pop(partition, None)
            if segment is None:
                return None
            return self._seal(segment)

    def seal_all(self) -> list[Sealed]:
        with self._lock:
            partitions = list(self._open)
        return [s for p in partitions if (s := self.seal(p)) is not None]

    def open_segments(self) -> list[tuple[str, _Open]]:
        with self._lock:
            return list(self._open.items())

    def _seal(self, segment: _Open, *, adopted: bool = False) -> Sealed | None:
        raw = b"".join(segment.lines) if segment.path is None else _payload(segment.path)
        raw = raw[: raw.rfind(b"\n") + 1]  # a line torn by a crash mid-append is dropped
        if not raw:  # created by a process that died before its first line: nothing to store
            self._used -= segment.size
            if segment.path is not None:
                segment.path.unlink()
            return None
        chain = segment.chain
        if adopted or segment.unsorted:  # rare: read the chain positions from the lines
            raw, chain = _in_chain_order(raw)
        events = raw.count(b"\n")
        body = self.encode(raw)
        self._used += len(body) - segment.size
        if segment.path is None:
            sealed = Sealed(segment.key, len(body), body=body, events=events, chain=chain)
        else:
            assert self._dir is not None
            path = self._dir / (segment.path.stem.replace("open-", "obj-") + ".obj")
            _write_new(path, _header(segment.key, events, chain) + b"\n" + body)
            segment.path.unlink()
            _fsync_dir(self._dir)
            sealed = Sealed(segment.key, len(body), path=path, events=events, chain=chain)
        self._sealed.append(sealed)
        return sealed

    # -- uploading -----------------------------------------------------------------------------

    def next_sealed(self) -> Sealed | None:
        with self._lock:
            return self._sealed[0] if self._sealed else None

    def pending(self) -> int:
        with self._lock:
            return len(self._sealed)

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
