"""The paging file's own write and read errors: nothing is lost, order is kept, and memory
the file could not take counts towards the memory alarm.

In process (a sans-IO peer over a real Broker) with a paging file whose SQL fails on demand,
and one that cannot be opened at all; end to end with pika against ``tests.fault_broker``,
and against a genuinely full tmpfs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPError

from amqpd.broker import paging
from amqpd.broker.paging import KEEP_IN_MEMORY, RETRY_FIRST, SpillFile

from .broker_process import BrokerProcess
from .test_paging import get_all, paging_peer
from .test_reliability import FaultBroker, connect, small_tmpfs

DISK_FULL = "database or disk is full"
BLOCKED = "Blocked connection timeout expired."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedSpillFile(SpillFile):
    """A paging file whose inserts fail while ``fail_insert(rows)`` says so, and whose
    reads fail while ``fail_reads`` is set; a fake clock drives its retries."""

    def __init__(self, path: Path | None, account: Callable[[int], None],
                 clock: Clock) -> None:
        super().__init__(path, account, clock)
        self.fail_insert: Callable[[list[paging._Row]], bool] = lambda rows: False
        self.fail_reads = False
        self.inserts = 0

    def _insert(self, rows: list[paging._Row]) -> None:
        self.inserts += 1
        if self.fail_insert(rows):
            raise sqlite3.OperationalError(DISK_FULL)
        super()._insert(rows)

    def _select(self, queue_id: int, after: int, limit: int) -> list[paging._Selected]:
        if self.fail_reads:
            raise sqlite3.OperationalError("disk I/O error")
        return super()._select(queue_id, after, limit)


def scripted(peer_broker: object) -> tuple[ScriptedSpillFile, Clock]:
    clock = Clock()
    files: list[ScriptedSpillFile] = []

    def make(path: Path | None, account: Callable[[int], None]) -> SpillFile:
        files.append(ScriptedSpillFile(path, account, clock))
        return files[-1]

    pager = peer_broker.pager  # type: ignore[attr-defined]
    pager.file_type = make
    return pager.file, clock  # made now, so the test can steer it before the first write


def numbers(first: int, last: int) -> list[bytes]:
    return [str(n).encode() for n in range(first, last)]


class Publisher:
    """Publishes numbered messages (0, 1, 2, ... across calls) to one queue."""

    def __init__(self, peer: object, queue: str) -> None:
        self.peer, self.queue, self.next = peer, queue, 0

    def __call__(self, count: int) -> None:
        for number in range(self.next, self.next + count):
            self.peer.publish(1, "", self.queue, str(number).encode())  # type: ignore[attr-defined]
        self.next += count


def test_a_failed_write_keeps_the_entries_in_memory_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = paging_peer()
    broker = peer.broker
    spill, _ = scripted(broker)
    spill.fail_insert = lambda rows: True
    peer.send(1, paging_queue("q"))
    publish_many = Publisher(peer, "q")
    publish_many(KEEP_IN_MEMORY)
    in_memory = broker.journal.queued_bytes
    with caplog.at_level(logging.ERROR, logger="amqpd.broker.paging"):
        publish_many(3000)  # three chunks, every write fails
    queue = broker.vhosts["/"].queues["q"]
    assert queue.paged == 3000 and spill.held_entries == 3000
    # Counted as memory again (2,000 entries in the queue's memory, 3,000 held).
    assert broker.journal.queued_bytes > in_memory * 2
    assert spill.inserts == 1  # after the first failure, no write until the retry is due
    assert broker.health() == [  # what `amqpd ping` and the health output show
        "paging file (memory): writes failing, 3000 messages held in memory instead"]
    assert [r.getMessage() for r in caplog.records] == [
        "paging file (memory): write failed: database or disk is full; queue tails stay in "
        "memory (publishers are blocked at the memory high watermark), retrying"]
    broker.memory_limit = (in_memory * 2)  # above it with the held entries, below without
    assert broker.check_memory()
    assert get_all(peer, "q") == numbers(0, KEEP_IN_MEMORY + 3000)
    assert broker.journal.queued_bytes == 0
    assert not broker.check_memory()


def test_held_entries_are_written_when_the_disk_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = paging_peer()
    broker = peer.broker
    spill, clock = scripted(broker)
    failing = True
    spill.fail_insert = lambda rows: failing
    peer.send(1, paging_queue("q"))
    publish_many = Publisher(peer, "q")
    publish_many(KEEP_IN_MEMORY)
    in_memory = broker.journal.queued_bytes
    publish_many(2000)
    assert spill.held_entries == 2000
    clock.now += RETRY_FIRST
    broker.pager.retry()  # due, but the disk is still full: the next one is 2 s away
    assert spill.held_entries == 2000
    failing = False
    clock.now += RETRY_FIRST
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="amqpd.broker.paging"):
        broker.pager.retry()
        assert spill.held_entries == 2000  # not due yet
        clock.now += RETRY_FIRST
        broker.pager.retry()
    assert spill.held_entries == 0 and spill.failing_since is None
    assert broker.journal.queued_bytes == in_memory
    assert [r.getMessage() for r in caplog.records] == [
        "paging file (memory): writes succeed again after 3.0 s"]
    assert get_all(peer, "q") == numbers(0, KEEP_IN_MEMORY + 2000)


def test_order_is_kept_when_held_entries_are_older_than_the_file() -> None:
    """The first chunk never gets written, later ones do: reads merge the held chunk with
    the file by position, and rows read but not yet taken are never written back (the file's
    side of the queue starts after them)."""
    peer = paging_peer()
    broker = peer.broker
    spill, clock = scripted(broker)
    first_chunk_seq = KEEP_IN_MEMORY
    spill.fail_insert = lambda rows: rows[0][1] == first_chunk_seq
    peer.send(1, paging_queue("q"))
    publish_many = Publisher(peer, "q")
    publish_many(KEEP_IN_MEMORY)
    for _ in range(4):  # four chunks: the first is held, the retry of it keeps failing
        publish_many(1000)
        clock.now += 60
    assert spill.held_entries == 1000
    got = get_all_in_steps(peer, "q", broker.pager.retry, clock)
    assert got == numbers(0, KEEP_IN_MEMORY + 4000)
    assert broker.journal.queued_bytes == 0


def get_all_in_steps(peer: object, queue: str, between: Callable[[], None],
                     clock: Clock) -> list[bytes]:
    """basic.get everything, running ``between`` (a due retry) after every 500 messages."""
    from pamqp import commands

    bodies = []
    while True:
        frames = [v for _, v in peer.send(  # type: ignore[attr-defined]
            1, commands.Basic.Get(queue=queue, no_ack=True))]
        if isinstance(frames[0], commands.Basic.GetEmpty):
            return bodies
        bodies.append(frames[2].value)
        if len(bodies) % 500 == 0:
            clock.now += 60
            between()


def test_a_failed_read_loses_nothing_and_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    peer = paging_peer()
    broker = peer.broker
    spill, _ = scripted(broker)
    peer.send(1, paging_queue("q"))
    Publisher(peer, "q")(KEEP_IN_MEMORY + 3000)
    spill.fail_reads = True
    with caplog.at_level(logging.WARNING, logger="amqpd.broker.paging"):
        first = get_all(peer, "q")  # what is in memory; the paged tail cannot be read
        queue = broker.vhosts["/"].queues["q"]
        assert first == numbers(0, len(first)) and queue.message_count == \
            KEEP_IN_MEMORY + 3000 - len(first)
        assert broker.health() == ["paging file (memory): reads failing, paged messages wait"]
        spill.fail_reads = False
        rest = get_all(peer, "q")
    assert first + rest == numbers(0, KEEP_IN_MEMORY + 3000)
    assert broker.health() == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "paging file (memory): read failed: disk I/O error; paged messages stay in their "
        "queues until it can be read",
        "paging file (memory): reads succeed again",
    ]


def test_a_paging_file_that_cannot_be_opened_holds_everything_in_memory(
    tmp_path: Path,
) -> None:
    peer = paging_peer()
    broker = peer.broker
    broker.pager.path = tmp_path / "no-such-directory" / paging.FILENAME  # a real error
    peer.send(1, paging_queue("q"))
    Publisher(peer, "q")(KEEP_IN_MEMORY + 2500)
    assert broker.pager.file.held_entries == 2000  # two chunks; 500 in the spill buffer
    assert get_all(peer, "q") == numbers(0, KEEP_IN_MEMORY + 2500)
    assert broker.journal.queued_bytes == 0


def test_deleting_a_queue_forgets_its_held_entries() -> None:
    peer = paging_peer()
    broker = peer.broker
    spill, _ = scripted(broker)
    spill.fail_insert = lambda rows: True
    peer.send(1, paging_queue("q"), paging_queue("r"))
    Publisher(peer, "q")(KEEP_IN_MEMORY + 1000)
    Publisher(peer, "r")(KEEP_IN_MEMORY + 1000)
    assert spill.held_entries == 2000
    from pamqp import commands

    peer.send(1, commands.Queue.Delete(queue="r"))
    assert spill.held_entries == 1000
    assert get_all(peer, "q") == numbers(0, KEEP_IN_MEMORY + 1000)
    assert broker.journal.queued_bytes == 0


def test_queue_ids_are_not_reused_after_a_drop() -> None:
    """Two queues paging, the first deleted, a third starts paging: it must not read the
    second one's rows (ids were once ``len(ids) + 1``)."""
    spill = SpillFile(None)
    second, third = object(), object()
    spill.queue_id(object())
    spill.queue_id(second)
    spill.drop(next(iter(spill._queue_ids)))
    assert spill.queue_id(third) != spill.queue_id(second)


def paging_queue(name: str) -> object:
    from pamqp import commands

    return commands.Queue.Declare(queue=name)


# -- end to end ------------------------------------------------------------------------------


def transient_backlog(broker: BrokerProcess, queue: str, count: int, size: int,
                      blocked: list[str]) -> int:
    """Publish up to ``count`` transient messages of ``size`` bytes, each confirmed before
    the next, until the broker blocks the publisher (connection.blocked) for 2 s: pika then
    drops the connection, and ``blocked`` gets why. Returns how many were confirmed."""
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        broker.host, broker.port, blocked_connection_timeout=2))
    channel = connection.channel()
    channel.queue_declare(queue)
    channel.confirm_delivery()
    confirmed = 0
    body = b"x" * size
    try:
        while confirmed < count:
            channel.basic_publish("", queue, str(confirmed).encode() + b":" + body)
            confirmed += 1
    except AMQPError as exc:
        blocked.append(str(exc))  # "Blocked connection timeout expired." when blocked
        return confirmed
    connection.close()
    return confirmed


def drain(broker: BrokerProcess, queue: str) -> list[int]:
    connection = connect(broker)
    channel = connection.channel()
    numbers = []
    while True:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        numbers.append(int(body.split(b":", 1)[0]))
    connection.close()
    return numbers


def test_paging_write_errors_block_publishers_instead_of_losing_messages(
    tmp_path: Path,
) -> None:
    """pika end to end: the paging file refuses every write, so the backlog stays in memory
    until the memory alarm blocks the publisher; a consumer then gets every confirmed
    message, in order; once the file takes writes again, paging resumes."""
    broker = FaultBroker(tmp_path, "--set", "limits.memory_high_watermark=12MiB",
                         "--set", "limits.disk_free_limit=0")
    try:
        broker.set("paging", "enospc")
        blocked: list[str] = []
        # About 1.4 KiB a message in memory: paging from 6 MiB, the alarm at 12 MiB.
        confirmed = transient_backlog(broker, "backlog", 100_000, 1024, blocked)
        assert blocked == [BLOCKED], blocked  # blocked, not lost or refused
        assert 6_000 < confirmed < 20_000, confirmed
        broker.set("paging", "")  # the disk is back: the next retry pages the tail out
        got = drain(broker, "backlog")
        # (+1: the publish in flight when the alarm was raised, read once it cleared.)
        assert got[:confirmed] == list(range(confirmed)) and len(got) - confirmed in (0, 1)
        # Paging works again: a second backlog goes to the file without an alarm.
        again: list[str] = []
        assert transient_backlog(broker, "again", 12_000, 1024, again) == 12_000
        assert not again
        assert drain(broker, "again") == list(range(12_000))
    finally:
        assert broker.stop() == 0
    log = broker.stderr()
    assert log.count("write failed: database or disk is full") == 1, log
    assert log.count("writes succeed again") == 1, log
    assert "memory alarm raised" in log and "memory alarm cleared" in log


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_paging_file_system(tmp_path: Path) -> None:
    """The data directory on a 4 MiB tmpfs (transient messages write nothing to the store):
    the paging file fills it and SQLite itself reports SQLITE_FULL; the tail stays in memory,
    the memory alarm blocks the publisher, and every confirmed message is delivered, in
    order."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        broker = BrokerProcess(disk / "data", "--set", "limits.memory_high_watermark=16MiB",
                               "--set", "limits.disk_free_limit=0")
        try:
            blocked: list[str] = []
            confirmed = transient_backlog(broker, "fill", 200_000, 1024, blocked)
            assert blocked == [BLOCKED], blocked
            got = drain(broker, "fill")
            assert got[:confirmed] == list(range(confirmed)) and len(got) - confirmed in (0, 1)
        finally:
            assert broker.stop() == 0
        assert broker.process.stderr is not None
        log = broker.process.stderr.read()
        assert "write failed: database or disk is full" in log, log
        print(f"full paging file system: {confirmed} confirmed, {len(got)} delivered in order")


def test_a_paging_read_error_delays_delivery_but_loses_nothing(tmp_path: Path) -> None:
    broker = FaultBroker(tmp_path, "--set", "limits.memory_high_watermark=12MiB",
                         "--set", "limits.disk_free_limit=0")
    try:
        blocked: list[str] = []
        sent = transient_backlog(broker, "backlog", 15_000, 1024, blocked)
        assert sent == 15_000 and not blocked
        broker.set("paging", "read-eio")
        first = drain(broker, "backlog")  # the part in memory
        assert first == list(range(len(first))) and len(first) < sent
        broker.set("paging", "")
        rest = drain(broker, "backlog")
        assert first + rest == list(range(sent))
    finally:
        assert broker.stop() == 0
    log = broker.stderr()
    assert log.count("read failed: disk I/O error") == 1, log
    assert log.count("reads succeed again") == 1, log

