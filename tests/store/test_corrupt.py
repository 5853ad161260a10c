"""A damaged, foreign or newer file is refused with a message naming it, and left untouched."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from amqpd.store import (
    Batch,
    QueueRecord,
    SQLiteStore,
    StoreCorruptError,
    StoreLockedError,
    StoreVersionError,
)
from amqpd.store.sqlite_file import APPLICATION_ID


def make_store(path: Path, messages: int = 300) -> None:
    with SQLiteStore(path) as store:
        batch = Batch()
        batch.put_queue(QueueRecord("/", "q", True, False, {"x-max-length": 10}))
        for mid in range(1, messages + 1):
            batch.put_message(mid, "", "q", b"header", os.urandom(200))
            batch.put_entry(("/", "q"), mid, mid)
        store.commit(batch)
    assert not Path(f"{path}-wal").exists()  # closed cleanly: everything is in the main file


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_refused_and_untouched(path: Path, error: type[Exception], *, load: bool = False) -> str:
    before = files_in(path.parent)
    with pytest.raises(error) as excinfo:
        store = SQLiteStore(path)
        try:
            if load:
                store.load()
        finally:
            store.close()
    assert files_in(path.parent) == before
    message = str(excinfo.value)
    assert str(path) in message
    return message


def overwrite(offset: int, data: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with path.open("r+b") as file:
            file.seek(offset)
            file.write(data)

    return damage


def truncate(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        os.truncate(path, int(path.stat().st_size * fraction))

    return damage


def truncate_pages(keep: int) -> Callable[[Path], None]:
    return lambda path: os.truncate(path, keep * 4096)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(50_000)), id="garbage"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(overwrite(0, b"not an sqlite file"), id="bad-magic"),
        pytest.param(overwrite(16, b"\x00\x07"), id="bad-page-size"),
        pytest.param(truncate(0.5), id="truncated-half"),
        pytest.param(truncate(0.999), id="truncated-mid-page"),
        pytest.param(truncate(0.01), id="truncated-to-header"),
        pytest.param(truncate_pages(5), id="truncated-at-page-boundary"),
    ],
)
def test_damaged_file_is_refused(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    path = tmp_path / "amqpd.sqlite3"
    make_store(path)
    damage(path)
    message = assert_refused_and_untouched(path, StoreCorruptError, load=True)
    assert "move it aside" in message


def test_damaged_pages_are_found_by_load(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    make_store(path)
    size = path.stat().st_size
    # Garbage over the b-tree pages in the middle of the file (the header stays valid).
    overwrite(size // 2, os.urandom(3 * 4096))(path)
    assert_refused_and_untouched(path, StoreCorruptError, load=True)


def test_check_integrity_finds_what_load_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    make_store(path)
    overwrite(4096 + 8, os.urandom(64))(path)  # page 2: the pointer map load() never reads
    with SQLiteStore(path) as store, pytest.raises(StoreCorruptError, match=str(path)):
        store.check_integrity()


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something_else (x)")
    conn.commit()
    conn.close()
    message = assert_refused_and_untouched(path, StoreCorruptError)
    assert "not an amqpd store" in message


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    make_store(path, messages=1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    message = assert_refused_and_untouched(path, StoreVersionError)
    assert "newer amqpd" in message and "99" in message


def test_a_log_without_its_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    Path(f"{path}-wal").write_bytes(os.urandom(1000))
    assert_refused_and_untouched(path, StoreCorruptError)
    assert not path.exists()


def test_a_second_opener_is_refused_while_the_first_has_it(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    with SQLiteStore(path) as first:
        with pytest.raises(StoreLockedError, match=str(path)):
            SQLiteStore(path)
        first.load()  # the first is unaffected
    SQLiteStore(path).close()  # free again once the first closed


def test_creation_is_atomic_and_leftovers_of_a_crashed_creation_are_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "amqpd.sqlite3"
    path.parent.mkdir()
    Path(f"{path}.new").write_bytes(b"half-built store from a crash")
    with SQLiteStore(path) as store:
        assert store.load().queues == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["amqpd.sqlite3"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()
