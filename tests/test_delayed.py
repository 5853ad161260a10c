"""amqpd.broker.delayed without sockets: due order, the memory budget (bodies of stored
held messages left on disk and read back when due), deletion and recovery."""

from __future__ import annotations

from pamqp import commands

from amqpd.broker.broker import Broker
from amqpd.broker.message import Message, route_for
from amqpd.broker.persistence import PersistentJournal, recover
from amqpd.broker.vhost import VirtualHost
from amqpd.protocol import codec
from amqpd.store.memory import MemoryStore


def message(body: bytes, delay: object, persistent: bool = True) -> Message:
    properties = commands.Basic.Properties(headers={"x-delay": delay},
                                           delivery_mode=2 if persistent else 1)
    return Message(route_for("d", "k"), codec.encode_header_payload(len(body), properties),
                   body)


def commit(journal: PersistentJournal) -> None:
    number, batch = journal.take_batch()
    journal.store.commit(batch)
    journal.committed_through(number)


def persistent_broker(store: MemoryStore) -> tuple[Broker, VirtualHost, PersistentJournal]:
    broker = Broker()
    journal = PersistentJournal(store)
    broker.use_journal(journal)
    recover(broker, journal, store.load(with_entries=False))
    vhost = broker.vhosts["/"]
    return broker, vhost, journal


def setup(vhost: VirtualHost) -> None:
    vhost.declare_exchange("d", "x-delayed-message", durable=True,
                           arguments={"x-delayed-type": "direct"})
    vhost.declare_queue("q", None, durable=True)
    vhost.bind("d", vhost.queues["q"], "k", {})


def bodies(vhost: VirtualHost) -> list[bytes]:
    queue = vhost.queues["q"]
    out = []
    while (entry := queue.take()) is not None:
        out.append(entry.message.body)
        queue.acknowledge(entry)
    return out


def test_due_order_and_bodies_left_on_disk_over_budget() -> None:
    store = MemoryStore()
    _, vhost, journal = persistent_broker(store)
    setup(vhost)
    delayed = vhost.delayed
    delayed.memory_budget = 1  # every stored held message leaves its body on disk
    exchange = vhost.exchanges["d"]
    for body, delay in ((b"c", 3000), (b"a", 1000), (b"b", 2000), (b"a2", 1000)):
        assert delayed.hold(exchange, message(body, delay), now=100.0)
    assert delayed.count(exchange) == 4
    commit(journal)
    assert delayed.bytes_in_memory == 0  # the commit dropped the bodies
    assert delayed.tick(100.5) == 0
    assert delayed.tick(101.0) == 2
    assert delayed.tick(110.0) == 2
    assert bodies(vhost) == [b"a", b"a2", b"b", b"c"]
    assert delayed.count(exchange) == 0
    commit(journal)
    assert store.entry_counts() == {}  # held rows gone, queue entries acked


def test_recovery_and_deleted_exchange() -> None:
    store = MemoryStore()
    _, vhost, journal = persistent_broker(store)
    setup(vhost)
    exchange = vhost.exchanges["d"]
    vhost.delayed.hold(exchange, message(b"kept", 60_000))
    vhost.delayed.hold(exchange, message(b"transient", 60_000, persistent=False))
    commit(journal)
    _, vhost, journal = persistent_broker(store)
    assert vhost.delayed.count(vhost.exchanges["d"]) == 1
    vhost.delayed.tick(float("inf"))
    assert bodies(vhost) == [b"kept"]
    vhost.delayed.hold(vhost.exchanges["d"], message(b"dropped", 60_000))
    vhost.delete_exchange("d")
    assert len(vhost.delayed) == 0
    commit(journal)
    assert store.entry_counts() == {}


def test_no_delay_is_not_held() -> None:
    vhost = Broker().vhosts["/"]
    setup(vhost)
    for delay in (0, -5, "x", True, 2**32):
        assert not vhost.delayed.hold(vhost.exchanges["d"], message(b"m", delay))
