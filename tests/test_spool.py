"""The archive's disk spool: one journal write per batch, undone batches, crashes, adoption."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporters import _spool
from exporters._spool import ChainSpan, Spool, SpoolClosed, SpoolFull


def _raw(data: bytes) -> bytes:
    return data  # objects stay readable: no compression


@pytest.fixture
def spools(tmp_path: Path) -> Iterator[Callable[..., Spool]]:
    """Spools in ``tmp_path / "spool"`` (``writer`` names them), closed after the test."""
    made: list[Spool] = []

    def make(writer: str = "w1", max_bytes: int = 1 << 30) -> Spool:
        spool = Spool(tmp_path / "spool", max_bytes=max_bytes, writer=writer, encode=_raw)
        made.append(spool)
        return spool

    yield make
    for spool in made:
        spool.close()


def _key(partition: str) -> Callable[[], str]:
    return lambda: f"{partition}/object.jsonl"


def _lines(tag: str, n: int) -> list[bytes]:
    return [f'{{"id":"{tag}-{i}"}}\n'.encode() for i in range(n)]


def _batch(spool: Spool, appends: list[tuple[str, list[bytes]]]) -> None:
    with spool.batch():
        for partition, lines in appends:
            spool.append(partition, _key(partition), lines, now=0.0)


def _objects(spool: Spool) -> dict[str, bytes]:
    return {sealed.key: spool.body(sealed) for sealed in spool.sealed()}


def _journals(spool: Spool) -> list[Path]:
    assert spool.directory is not None
    return sorted((spool.directory / spool.writer).glob("*.jnl"))


def test_a_batch_over_many_partitions_is_one_journal_write_and_one_fsync(
    spools: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spools()
    with spool.batch():  # creates the journal
        for p in range(50):
            spool.append(f"org_{p}", _key(f"org_{p}"), _lines(f"a{p}", 2), now=0.0)
    synced: list[int] = []
    written: list[int] = []
    fsync, write = os.fsync, os.write

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        written.append(fd)
        return write(fd, data)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "write", counting_write)
    with spool.batch():
        for p in range(50):
            spool.append(f"org_{p}", _key(f"org_{p}"), _lines(f"b{p}", 3), now=0.0)
    assert len(synced) == 1
    assert len(written) == 1
    assert spool.open_events("org_7") == 5
    monkeypatch.undo()
    sealed = spool.seal("org_7")
    assert sealed is not None
    assert spool.body(sealed) == b"".join(_lines("a7", 2) + _lines("b7", 3))


def test_a_batch_that_raises_leaves_no_trace(spools: Callable[..., Spool]) -> None:
    spool = spools(max_bytes=200)
    spool.append("org_a", _key("org_a"), _lines("kept", 2), now=0.0)
    used = spool.used_bytes
    undone = [("org_a", _lines("undone", 1)), ("org_b", _lines("undone", 1))]
    with pytest.raises(SpoolFull):
        _batch(spool, [*undone, ("org_c", _lines("too-much", 20))])
    assert spool.used_bytes == used
    assert [partition for partition, _ in spool.open_segments()] == ["org_a"]
    assert spool.open_events("org_a") == 2
    spool.append("org_a", _key("org_a"), _lines("after", 1), now=0.0)
    sealed = spool.seal("org_a")
    assert sealed is not None
    assert spool.body(sealed) == b"".join(_lines("kept", 2) + _lines("after", 1))


def test_a_failed_journal_write_undoes_the_batch_and_moves_to_a_new_journal(
    spools: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spools()
    spool.append("org_a", _key("org_a"), _lines("before", 2), now=0.0)
    (first,) = _journals(spool)
    write = os.write

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        write(fd, bytes(data)[: len(data) // 2])  # a torn write, as a full disk leaves it
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        _batch(spool, [("org_a", _lines("lost", 2)), ("org_b", _lines("lost", 2))])
    monkeypatch.undo()
    assert spool.open_events("org_a") == 2
    assert spool.open_events("org_b") == 0
    spool.append("org_a", _key("org_a"), _lines("after", 1), now=0.0)
    assert len(_journals(spool)) == 2  # the torn one is never appended to again
    spool.close()  # as after SIGKILL: the next writer adopts the directory
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 1
    assert _objects(survivor) == {
        "org_a/object.jsonl": b"".join(_lines("before", 2) + _lines("after", 1))
    }
    assert first.exists() is False  # adopted: the dead writer's files are gone


def test_a_record_torn_by_a_crash_is_dropped_and_the_records_before_it_kept(
    spools: Callable[..., Spool],
) -> None:
    dead = spools("dead")
    dead.append("org_a", _key("org_a"), _lines("a", 2), now=0.0)
    dead.append("org_b", _key("org_b"), _lines("b", 1), now=0.0)
    dead.close()
    (journal,) = _journals(dead)
    with journal.open("ab") as f:  # a crash mid-write: a record cut short
        f.write(b'#[1,"org_a/object.jsonl",500]\n{"id":"cut')
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 2
    assert _objects(survivor) == {
        "org_a/object.jsonl": b"".join(_lines("a", 2)),
        "org_b/object.jsonl": b"".join(_lines("b", 1)),
    }


def test_a_segment_sealed_before_a_crash_is_adopted_once(spools: Callable[..., Spool]) -> None:
    dead = spools("dead")
    dead.append("org_a", _key("org_a"), _lines("a", 2), now=0.0)
    dead.append("org_b", _key("org_b"), _lines("b", 1), now=0.0)
    dead.seal("org_a")  # its object waits for upload; org_b keeps the journal
    assert len(_journals(dead)) == 1
    dead.close()
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 2
    assert sorted(s.key for s in survivor.sealed()) == ["org_a/object.jsonl", "org_b/object.jsonl"]
    assert _objects(survivor)["org_a/object.jsonl"] == b"".join(_lines("a", 2))


def test_a_closed_spool_never_touches_a_descriptor_it_closed(
    spools: Callable[..., Spool], tmp_path: Path
) -> None:
    """An export or upload outliving a shutdown's deadline uses the spool after close(): it
    gets SpoolClosed or nothing to do, never the journal's old descriptor number, which the
    process may have given to another file by then."""
    spool = spools()
    spool.append("org_a", _key("org_a"), _lines("kept", 2), now=0.0)
    spool.close()
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"another component's bytes\n")
    fd = os.open(foreign, os.O_RDWR)  # likely the journal's old number
    try:
        assert spool.seal("org_a") is None
        assert spool.seal_all() == []
        assert spool.open_segments() == []
        assert spool.claim() is None
        with pytest.raises(SpoolClosed):
            spool.append("org_a", _key("org_a"), _lines("late", 1), now=0.0)
    finally:
        os.close(fd)
    assert foreign.read_bytes() == b"another component's bytes\n"
    survivor = spools("w2")  # what was spooled before the close is adopted, whole
    assert survivor.adopt_orphans() == 1
    assert _objects(survivor) == {"org_a/object.jsonl": b"".join(_lines("kept", 2))}


def test_a_spool_closed_during_a_batch_refuses_the_batch(spools: Callable[..., Spool]) -> None:
    spool = spools()
    spool.append("org_a", _key("org_a"), _lines("kept", 1), now=0.0)

    def close_mid_batch() -> None:
        with spool.batch():
            spool.append("org_a", _key("org_a"), _lines("staged", 1), now=0.0)
            spool.close()  # as another thread's shutdown would, between append and write

    with pytest.raises(SpoolClosed):
        close_mid_batch()
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 1
    assert _objects(survivor) == {"org_a/object.jsonl": b"".join(_lines("kept", 1))}


class _BlockingEncode:
    """An encoder that, for the lines of ``tag``, waits until ``go`` is set (or 10 s) and
    notes whether it was: what another thread could do meanwhile."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.started = threading.Event()
        self.go = threading.Event()
        self.went: list[bool] = []

    def __call__(self, raw: bytes) -> bytes:
        if self.tag in raw:
            self.started.set()
            self.went.append(self.go.wait(10))
        return raw


def _seal_b_blocked(spool: Spool) -> tuple[_BlockingEncode, threading.Thread, list[object]]:
    """Append three lines to org_b and seal them in another thread, whose compression has
    started, and blocks, by the time this returns."""
    spool.encode = encode = _BlockingEncode(b'"b-')
    spool.append("org_b", _key("org_b"), _lines("b", 3), now=0.0)
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(spool.seal("org_b")))
    thread.start()
    assert encode.started.wait(10)
    return encode, thread, result


def test_sealed_objects_are_uploaded_while_another_segment_is_compressed(
    spools: Callable[..., Spool],
) -> None:
    spool = spools()
    spool.append("org_a", _key("org_a"), _lines("a", 2), now=0.0)
    first = spool.seal("org_a")
    assert first is not None
    encode, thread, result = _seal_b_blocked(spool)
    # While org_b is compressed, the uploader's calls go through and org_b counts as pending.
    assert spool.pending() == 2
    assert spool.claim() is first
    spool.done(first)
    assert spool.pending() == 1
    encode.go.set()
    thread.join(10)
    assert encode.went == [True]  # the calls above did not wait for the compression
    assert result[0] is not None
    assert spool.pending() == 1
    assert _objects(spool) == {"org_b/object.jsonl": b"".join(_lines("b", 3))}


def test_a_spool_closed_while_a_segment_is_compressed_keeps_it_for_adoption(
    spools: Callable[..., Spool],
) -> None:
    spool = spools()
    encode, thread, result = _seal_b_blocked(spool)
    spool.close()  # a shutdown's deadline passing mid-seal
    encode.go.set()
    thread.join(10)
    assert result == [None]
    assert spool.pending() == 0
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 1
    assert _objects(survivor) == {"org_b/object.jsonl": b"".join(_lines("b", 3))}


def test_a_seal_whose_compression_fails_is_not_left_pending(spools: Callable[..., Spool]) -> None:
    spool = spools()

    def fail(raw: bytes) -> bytes:
        raise ValueError("cannot encode")

    spool.encode = fail
    spool.append("org_a", _key("org_a"), _lines("a", 1), now=0.0)
    with pytest.raises(ValueError, match="cannot encode"):
        spool.seal("org_a")
    assert spool.pending() == 0


@pytest.fixture
def rotating(spools: Callable[..., Spool], monkeypatch: pytest.MonkeyPatch) -> Spool:
    """A spool that starts a new journal after every batch."""
    monkeypatch.setattr(_spool, "_JOURNAL_ROTATE", 1)
    return spools()


def test_a_journal_is_deleted_once_every_segment_in_it_is_sealed(rotating: Spool) -> None:
    spool = rotating
    spool.append("org_a", _key("org_a"), _lines("a", 1), now=0.0)
    spool.append("org_b", _key("org_b"), _lines("b", 1), now=0.0)
    spool.append("org_a", _key("org_a"), _lines("a2", 1), now=0.0)
    assert len(_journals(spool)) == 3
    spool.seal("org_b")
    assert len(_journals(spool)) == 2  # org_b's journal; org_a keeps the other two
    spool.seal("org_a")
    assert _journals(spool) == []
    assert spool.used_bytes == sum(s.size for s in spool.sealed())


def test_a_quiet_partition_cannot_keep_old_journals_on_disk(rotating: Spool) -> None:
    spool = rotating
    spool.append("quiet", _key("quiet"), _lines("q", 1), now=0.0)
    for n in range(3):
        spool.append("busy", _key("busy"), _lines(f"b{n}", 2), now=0.0)
    assert len(_journals(spool)) == 4
    assert spool.sealed() == []
    spool.append("busy", _key("busy"), _lines("b3", 2), now=0.0)  # a fifth journal is due
    assert len(_journals(spool)) == 4  # the oldest went: the quiet segment in it was sealed
    assert _objects(spool) == {"quiet/object.jsonl": b"".join(_lines("q", 1))}
    assert spool.open_events("busy") == 8
    # the cap counts what is on disk: the journals as they are, and the sealed objects
    on_disk = sum(p.stat().st_size - len(_spool._JOURNAL_MAGIC) for p in _journals(spool))
    assert spool.used_bytes == on_disk + sum(s.size for s in spool.sealed())


def test_a_seal_inside_a_batch_writes_what_the_batch_staged_first(
    spools: Callable[..., Spool],
) -> None:
    spool = spools()
    chain = ChainSpan("s", 1, 2, "h" * 64)
    with spool.batch():
        spool.append("org_a", _key("org_a"), _lines("a", 2), now=0.0, chain=chain)
        sealed = spool.seal("org_a")
        spool.append("org_a", _key("org_a"), _lines("next", 1), now=0.0)
    assert sealed is not None
    assert spool.body(sealed) == b"".join(_lines("a", 2))
    assert sealed.chain == chain
    assert spool.open_events("org_a") == 1


def test_segment_files_of_the_per_partition_layout_are_still_adopted(
    spools: Callable[..., Spool], tmp_path: Path
) -> None:
    old = tmp_path / "spool" / "old-writer"
    old.mkdir(parents=True)
    (old / "lock").touch()
    lines = b"".join(_lines("old", 3))
    (old / "open-0-abcd.seg").write_bytes(b"AUDITSPOOL1\norg_a/old.jsonl\n" + lines)
    survivor = spools("w2")
    assert survivor.adopt_orphans() == 1
    assert _objects(survivor) == {"org_a/old.jsonl": lines}
    assert not old.exists()
