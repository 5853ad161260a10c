"""amqpd.broker.delayed without sockets: due order, the memory budget (bodies of stored
held messages left on disk and read back when due, a batch per query), deletion, recovery,
and holding at a delayed exchange reached through an exchange-to-exchange binding."""

from __future__ import annotations

from pamqp import commands

from amqpd.broker import routing
from amqpd.broker.broker import Broker
from amqpd.broker.delayed import RELEASE_BATCH, DelayedMessages
from amqpd.broker.message import Message, route_for
from amqpd.broker.persistence import PersistentJournal, recover
from amqpd.broker.vhost import VirtualHost
from amqpd.protocol import codec
from amqpd.store.memory import MemoryStore


def release_all(delayed: DelayedMessages) -> None:
    """Tick until nothing is held (a tick works for a bounded time)."""
    while delayed.next_due is not None:
        delayed.tick(float("inf"))


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
    release_all(vhost.delayed)
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


def test_release_reads_batches_in_due_order_across_exchanges() -> None:
    """More held messages than one read batch, on two exchanges, most bodies on disk:
    released in due order (publish order among equal due times) whichever exchange holds
    them, and the stored rows are gone afterwards."""
    store = MemoryStore()
    _, vhost, journal = persistent_broker(store)
    setup(vhost)
    vhost.declare_exchange("d2", "x-delayed-message", durable=True,
                           arguments={"x-delayed-type": "direct"})
    vhost.bind("d2", vhost.queues["q"], "k", {})
    delayed = vhost.delayed
    delayed.memory_budget = 20_000  # a few dozen bodies stay in memory, the rest on disk
    count = RELEASE_BATCH * 3
    expected = []
    for index in range(count):
        delay = 1000 + (index * 7919) % 500
        exchange = vhost.exchanges["d" if index % 2 else "d2"]
        assert delayed.hold(exchange, message(str(index).encode(), delay), now=100.0)
        expected.append((delay, index))
    commit(journal)
    assert 0 < delayed.bytes_in_memory <= 20_000
    assert len(delayed) == count
    assert delayed.tick(100.999) == 0
    release_all(delayed)
    assert bodies(vhost) == [str(index).encode() for _, index in sorted(expected)]
    assert delayed.bytes_in_memory == 0
    commit(journal)
    assert store.entry_counts() == {}


def test_due_before_its_commit_is_released_from_memory() -> None:
    """Over the budget a stored message keeps only its key once its row is committed;
    due before that commit, it is released from memory."""
    store = MemoryStore()
    _, vhost, journal = persistent_broker(store)
    setup(vhost)
    delayed = vhost.delayed
    delayed.memory_budget = 1
    assert delayed.hold(vhost.exchanges["d"], message(b"quick", 1), now=100.0)
    assert delayed.tick(100.5) == 1
    assert bodies(vhost) == [b"quick"]
    commit(journal)
    assert delayed.bytes_in_memory == 0
    assert store.entry_counts() == {}


def test_holds_made_while_recovering_keep_due_order() -> None:
    """A restart reads held messages back a slice at a time; a message held meanwhile gets
    a seq above the stored ones and is released in due order with them."""
    store = MemoryStore()
    _, vhost, journal = persistent_broker(store)
    setup(vhost)
    for index in range(50):
        vhost.delayed.hold(vhost.exchanges["d"], message(b"old%d" % index, 1000 + index))
    commit(journal)
    _, vhost, journal = persistent_broker(store)
    assert vhost.delayed.next_due == 0.0  # the ticker goes on reading them back
    assert vhost.delayed.count(vhost.exchanges["d"]) == 50
    vhost.delayed.hold(vhost.exchanges["d"], message(b"new", 1))
    release_all(vhost.delayed)
    assert bodies(vhost) == [b"new"] + [b"old%d" % index for index in range(50)]
    commit(journal)
    assert store.entry_counts() == {}


def test_exchange_to_exchange_arrival_is_held() -> None:
    """routing.route offers a message reaching a delayed exchange through an e2e binding
    to the holder; released, it carries x-delay negated and is not held again."""
    vhost = Broker().vhosts["/"]
    setup(vhost)
    vhost.declare_exchange("source", "direct")
    vhost.bind("source", vhost.exchanges["d"], "k", {})
    delayed = vhost.delayed
    held = message(b"m", 500, persistent=False)
    queues = routing.route(vhost.exchanges["source"], held, vhost.queues, vhost.get_exchange,
                           delayed.hold)
    assert list(queues) == []
    assert delayed.count(vhost.exchanges["d"]) == 1
    release_all(delayed)
    entry = vhost.queues["q"].take()
    assert entry is not None
    assert entry.message.body == b"m"
    assert entry.message.headers == {"x-delay": -500}
    assert len(delayed) == 0


def test_alternate_exchange_arrival_is_held() -> None:
    """A delayed exchange reached as an alternate exchange holds the message too (as the
    plugin, whose route callback RabbitMQ calls for the alternate exchange as well)."""
    vhost = Broker().vhosts["/"]
    setup(vhost)
    vhost.declare_exchange("unrouted", "direct", arguments={"alternate-exchange": "d"})
    queues = routing.route(vhost.exchanges["unrouted"], message(b"m", 500, persistent=False),
                           vhost.queues, vhost.get_exchange, vhost.delayed.hold)
    assert list(queues) == []
    assert vhost.delayed.count(vhost.exchanges["d"]) == 1
    release_all(vhost.delayed)
    assert bodies(vhost) == [b"m"]
