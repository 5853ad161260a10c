"""Paging: long queues keep their tail in the scratch file and give it back in order."""

from __future__ import annotations

from pathlib import Path

from pamqp import commands

from amqpd.broker.broker import Broker
from amqpd.broker.paging import KEEP_IN_MEMORY
from amqpd.config.settings import Settings

from .amqp_client import Peer


def paging_peer() -> Peer:
    broker = Broker(Settings())
    broker.pager.budget = 0  # page as soon as anything is queued
    peer = Peer(broker)
    peer.handshake()
    peer.open_channel()
    return peer


def publish_many(peer: Peer, queue: str, count: int) -> None:
    for number in range(count):
        peer.publish(1, "", queue, str(number).encode())


def get_all(peer: Peer, queue: str) -> list[bytes]:
    bodies = []
    while True:
        frames = [v for _, v in peer.send(1, commands.Basic.Get(queue=queue, no_ack=True))]
        if isinstance(frames[0], commands.Basic.GetEmpty):
            return bodies
        bodies.append(frames[2].value)


def test_tail_is_paged_out_and_read_back_in_order() -> None:
    peer = paging_peer()
    peer.send(1, commands.Queue.Declare(queue="q"))
    total = KEEP_IN_MEMORY + 3500
    publish_many(peer, "q", total)
    queue = peer.broker.vhosts["/"].queues["q"]
    assert len(queue.ready) == KEEP_IN_MEMORY
    assert queue.paged == 3500
    assert queue.message_count == total
    declare_ok = peer.send(1, commands.Queue.Declare(queue="q", passive=True))[0][1]
    assert declare_ok.message_count == total
    assert get_all(peer, "q") == [str(n).encode() for n in range(total)]
    assert queue.paged == 0


def test_memory_accounting_excludes_paged_messages() -> None:
    peer = paging_peer()
    peer.send(1, commands.Queue.Declare(queue="q"))
    publish_many(peer, "q", KEEP_IN_MEMORY)
    in_memory = peer.broker.journal.queued_bytes
    publish_many(peer, "q", 5000)
    assert peer.broker.journal.queued_bytes == in_memory
    get_all(peer, "q")
    assert peer.broker.journal.queued_bytes == 0


def test_consumers_drain_a_paged_queue() -> None:
    peer = paging_peer()
    peer.send(1, commands.Queue.Declare(queue="q"))
    total = KEEP_IN_MEMORY + 2500
    publish_many(peer, "q", total)
    frames = peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    bodies = [v.value for _, v in frames if hasattr(v, "value")]
    assert bodies == [str(n).encode() for n in range(total)]


def test_purge_and_delete_include_the_paged_tail() -> None:
    peer = paging_peer()
    peer.send(1, commands.Queue.Declare(queue="q"), commands.Queue.Declare(queue="r"))
    publish_many(peer, "q", KEEP_IN_MEMORY + 1500)
    publish_many(peer, "r", KEEP_IN_MEMORY + 1500)
    purge_ok = peer.send(1, commands.Queue.Purge(queue="q"))[0][1]
    assert purge_ok.message_count == KEEP_IN_MEMORY + 1500
    delete_ok = peer.send(1, commands.Queue.Delete(queue="r"))[0][1]
    assert delete_ok.message_count == KEEP_IN_MEMORY + 1500
    assert peer.broker.journal.queued_bytes == 0
    assert get_all(peer, "q") == []


def test_max_length_counts_paged_messages() -> None:
    peer = paging_peer()
    peer.send(1, commands.Queue.Declare(queue="q", arguments={"x-max-length": 3000}))
    publish_many(peer, "q", 4000)
    bodies = get_all(peer, "q")
    assert bodies == [str(n).encode() for n in range(1000, 4000)]


def test_scratch_file_goes_when_the_backlog_is_drained(tmp_path: Path) -> None:
    peer = paging_peer()
    peer.broker.pager.path = tmp_path / "paging.sqlite3"
    peer.send(1, commands.Queue.Declare(queue="q"))
    publish_many(peer, "q", KEEP_IN_MEMORY + 3000)
    assert (tmp_path / "paging.sqlite3").exists()
    get_all(peer, "q")
    assert not (tmp_path / "paging.sqlite3").exists()
    assert peer.broker.pager.spilled_entries == 0
