"""Message lifecycle in the core: TTL, dead-lettering, max-length, delivery limits, ack
deadlines, leases and transactions -- driven with bytes through the sans-IO connection."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pamqp import commands

from amqpd.broker.broker import Broker
from amqpd.config.settings import Settings

from .amqp_client import Peer

Props = commands.Basic.Properties


def ready_peer(broker: Broker | None = None) -> Peer:
    peer = Peer(broker)
    peer.handshake()
    peer.open_channel()
    return peer


def get(peer: Peer, queue: str) -> tuple[Any, Any, bytes] | None:
    frames = [value for _, value in peer.send(1, commands.Basic.Get(queue=queue, no_ack=True))]
    if isinstance(frames[0], commands.Basic.GetEmpty):
        return None
    body = frames[2].value if len(frames) > 2 else b""
    return frames[0], frames[1], body


def declare(peer: Peer, name: str, **arguments: Any) -> list[tuple[int, Any]]:
    return peer.send(1, commands.Queue.Declare(queue=name, arguments=arguments))


def closes(frames: list[tuple[int, Any]]) -> list[Any]:
    kinds = commands.Channel.Close | commands.Connection.Close
    return [v for _, v in frames if isinstance(v, kinds)]


def tick(peer: Peer, seconds: float = 0.0) -> None:
    peer.broker.tick(time.monotonic() + seconds)


# -- arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"),
    [("x-message-ttl", -1), ("x-message-ttl", "10"), ("x-expires", 0), ("x-max-length", -5),
     ("x-overflow", "drop-tail"), ("x-delivery-limit", 1.5), ("x-dead-letter-exchange", 5),
     ("x-single-active-consumer", "yes")],
)
def test_invalid_queue_arguments_are_406(argument: str, value: Any) -> None:
    peer = ready_peer()
    (close,) = closes(declare(peer, "q", **{argument: value}))
    assert close.reply_code == 406
    assert argument in close.reply_text


def test_invalid_expiration_is_406() -> None:
    peer = ready_peer()
    declare(peer, "q")
    (close,) = closes(peer.publish(1, "", "q", b"x", Props(expiration="soon")))
    assert close.reply_code == 406


# -- TTL -------------------------------------------------------------------------------


def test_queue_ttl_expires_without_consumers() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-message-ttl": 50})
    peer.publish(1, "", "q", b"x")
    assert peer.broker.vhosts["/"].queues["q"].message_count == 1
    tick(peer, 0.06)
    assert peer.broker.vhosts["/"].queues["q"].message_count == 0


def test_short_ttl_behind_a_message_without_ttl_expires_on_time() -> None:
    peer = ready_peer()
    declare(peer, "q")
    peer.publish(1, "", "q", b"keep")
    peer.publish(1, "", "q", b"short", Props(expiration="10"))
    tick(peer, 0.02)
    queue = peer.broker.vhosts["/"].queues["q"]
    assert queue.message_count == 1
    result = get(peer, "q")
    assert result is not None and result[2] == b"keep"
    assert get(peer, "q") is None


def test_lower_of_queue_and_message_ttl_wins() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-message-ttl": 10_000})
    peer.publish(1, "", "q", b"x", Props(expiration="10"))
    tick(peer, 0.02)
    assert get(peer, "q") is None


def test_ttl_zero_without_consumer_is_dropped() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-message-ttl": 0})
    peer.publish(1, "", "q", b"x")
    assert get(peer, "q") is None


def test_x_expires_deletes_unused_queue() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-expires": 50})
    tick(peer, 0.01)
    assert "q" in peer.broker.vhosts["/"].queues
    tick(peer, 0.06)
    assert "q" not in peer.broker.vhosts["/"].queues


# -- dead-lettering --------------------------------------------------------------------


def test_expired_message_is_dead_lettered_with_x_death() -> None:
    peer = ready_peer()
    declare(peer, "dlq")
    declare(peer, "q", **{"x-message-ttl": 10, "x-dead-letter-exchange": "",
                          "x-dead-letter-routing-key": "dlq"})
    peer.publish(1, "", "q", b"x", Props(headers={"h": 1}))
    tick(peer, 0.02)
    result = get(peer, "dlq")
    assert result is not None
    headers = result[1].properties.headers
    (death,) = headers["x-death"]
    assert death["reason"] == "expired"
    assert death["queue"] == "q"
    assert death["count"] == 1
    assert death["routing-keys"] == ["q"]
    assert headers["x-first-death-reason"] == "expired"
    assert headers["h"] == 1


def test_rejected_message_is_dead_lettered() -> None:
    peer = ready_peer()
    declare(peer, "dlq")
    declare(peer, "q", **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    peer.publish(1, "", "q", b"x")
    peer.send(1, commands.Basic.Get(queue="q"))
    peer.send(1, commands.Basic.Reject(delivery_tag=1, requeue=False))
    result = get(peer, "dlq")
    assert result is not None
    assert result[1].properties.headers["x-death"][0]["reason"] == "rejected"


def test_dead_letter_cycle_without_rejection_is_dropped() -> None:
    peer = ready_peer()
    declare(peer, "loop", **{"x-message-ttl": 10, "x-dead-letter-exchange": ""})
    peer.publish(1, "", "loop", b"x")
    tick(peer, 0.02)
    assert peer.broker.vhosts["/"].queues["loop"].message_count == 0


# -- limits ----------------------------------------------------------------------------


def test_max_length_drop_head_dead_letters_the_oldest() -> None:
    peer = ready_peer()
    declare(peer, "dlq")
    declare(peer, "q", **{"x-max-length": 2, "x-dead-letter-exchange": "",
                          "x-dead-letter-routing-key": "dlq"})
    for body in (b"1", b"2", b"3"):
        peer.publish(1, "", "q", body)
    assert [get(peer, "q")[2] for _ in range(2)] == [b"2", b"3"]  # type: ignore[index]
    dead = get(peer, "dlq")
    assert dead is not None and dead[2] == b"1"
    assert dead[1].properties.headers["x-death"][0]["reason"] == "maxlen"


def test_max_length_bytes() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-max-length-bytes": 10})
    peer.publish(1, "", "q", b"123456")
    peer.publish(1, "", "q", b"abcdef")
    result = get(peer, "q")
    assert result is not None and result[2] == b"abcdef"
    assert get(peer, "q") is None


def test_reject_publish_nacks_under_confirms() -> None:
    peer = ready_peer()
    peer.send(1, commands.Confirm.Select())
    declare(peer, "q", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    first = [v for _, v in peer.publish(1, "", "q", b"1")]
    second = [v for _, v in peer.publish(1, "", "q", b"2")]
    assert isinstance(first[0], commands.Basic.Ack)
    assert isinstance(second[0], commands.Basic.Nack) and second[0].delivery_tag == 2
    result = get(peer, "q")
    assert result is not None and result[2] == b"1"


def test_reject_publish_dlx_dead_letters_the_refused_message() -> None:
    peer = ready_peer()
    declare(peer, "dlq")
    declare(peer, "q", **{"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                          "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"})
    peer.publish(1, "", "q", b"1")
    peer.publish(1, "", "q", b"2")
    dead = get(peer, "dlq")
    assert dead is not None and dead[2] == b"2"


# -- delivery limit --------------------------------------------------------------------


def test_delivery_limit_dead_letters_after_n_returns_and_counts_redeliveries() -> None:
    peer = ready_peer()
    declare(peer, "dlq")
    declare(peer, "q", **{"x-delivery-limit": 2, "x-dead-letter-exchange": "",
                          "x-dead-letter-routing-key": "dlq"})
    peer.publish(1, "", "q", b"poison")
    counts = []
    for tag in range(1, 4):
        frames = [v for _, v in peer.send(1, commands.Basic.Get(queue="q"))]
        assert isinstance(frames[0], commands.Basic.GetOk)
        counts.append((frames[1].properties.headers or {}).get("x-delivery-count"))
        peer.send(1, commands.Basic.Nack(delivery_tag=tag, requeue=True))
    assert counts == [None, 1, 2]
    assert get(peer, "q") is None
    dead = get(peer, "dlq")
    assert dead is not None
    assert dead[1].properties.headers["x-death"][0]["reason"] == "delivery_limit"


# -- ack deadlines and leases ----------------------------------------------------------


def consume(peer: Peer, queue: str) -> list[Any]:
    return [v for _, v in peer.send(1, commands.Basic.Consume(queue=queue, consumer_tag="c"))]


def test_consumer_timeout_cancels_and_requeues() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-consumer-timeout": 1000})
    peer.publish(1, "", "q", b"x")
    consume(peer, "q")
    peer.now += 2
    peer.connection.tick()
    frames = peer.read()
    cancel = [v for _, v in frames if isinstance(v, commands.Basic.Cancel)]
    assert cancel and cancel[0].consumer_tag == "c"
    result = get(peer, "q")
    assert result is not None and result[0].redelivered


def test_lease_extends_the_deadline() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-consumer-timeout": 1000})
    peer.send(1, commands.Confirm.Select())
    peer.publish(1, "", "q", b"x")
    consume(peer, "q")
    frames = [v for _, v in peer.publish(
        1, "amq.lease", "", b"", Props(headers={"x-delivery-tag": 1, "x-extend-ms": 5000}))]
    assert isinstance(frames[0], commands.Basic.Ack)
    peer.now += 2
    peer.connection.tick()
    assert not [v for _, v in peer.read() if isinstance(v, commands.Basic.Cancel)]
    peer.now += 4
    peer.connection.tick()
    assert [v for _, v in peer.read() if isinstance(v, commands.Basic.Cancel)]


def test_lease_for_unknown_tag_is_406() -> None:
    peer = ready_peer()
    frames = peer.publish(1, "amq.lease", "", b"",
                          Props(headers={"x-delivery-tag": 9, "x-extend-ms": 10}))
    (close,) = closes(frames)
    assert close.reply_code == 406


# -- transactions ----------------------------------------------------------------------


def test_tx_commit_and_rollback() -> None:
    peer = ready_peer()
    declare(peer, "q")
    peer.send(1, commands.Tx.Select())
    peer.publish(1, "", "q", b"rolled back")
    peer.send(1, commands.Tx.Rollback())
    assert get(peer, "q") is None
    peer.publish(1, "", "q", b"committed")
    assert peer.broker.vhosts["/"].queues["q"].message_count == 0
    peer.send(1, commands.Tx.Commit())
    result = get(peer, "q")
    assert result is not None and result[2] == b"committed"


def test_tx_acks_apply_at_commit() -> None:
    peer = ready_peer()
    declare(peer, "q")
    peer.publish(1, "", "q", b"x")
    peer.send(1, commands.Tx.Select())
    peer.send(1, commands.Basic.Get(queue="q"))
    peer.send(1, commands.Basic.Ack(delivery_tag=1))
    peer.send(1, commands.Tx.Rollback())
    assert 1 in peer.connection.channels[1].unacked
    peer.send(1, commands.Basic.Ack(delivery_tag=1))
    peer.send(1, commands.Tx.Commit())
    assert not peer.connection.channels[1].unacked


def test_tx_and_confirm_do_not_mix() -> None:
    peer = ready_peer()
    peer.send(1, commands.Tx.Select())
    (close,) = closes(peer.send(1, commands.Confirm.Select()))
    assert close.reply_code == 406
    peer2 = ready_peer()
    peer2.send(1, commands.Confirm.Select())
    (close,) = closes(peer2.send(1, commands.Tx.Select()))
    assert close.reply_code == 406


def test_commit_without_select_is_406() -> None:
    peer = ready_peer()
    (close,) = closes(peer.send(1, commands.Tx.Commit()))
    assert close.reply_code == 406


# -- single active consumer and the memory alarm ---------------------------------------


def test_single_active_consumer() -> None:
    peer = ready_peer()
    declare(peer, "q", **{"x-single-active-consumer": True})
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="a", no_ack=True),
              commands.Basic.Consume(queue="q", consumer_tag="b", no_ack=True))
    tags = []
    for _ in range(3):
        tags += [v.consumer_tag for _, v in peer.publish(1, "", "q", b"x")
                 if isinstance(v, commands.Basic.Deliver)]
    assert tags == ["a", "a", "a"]
    peer.send(1, commands.Basic.Cancel(consumer_tag="a"))
    frames = peer.publish(1, "", "q", b"x")
    assert [v.consumer_tag for _, v in frames if isinstance(v, commands.Basic.Deliver)] == ["b"]


def test_memory_alarm_sends_blocked_and_unblocked() -> None:
    broker = Broker(Settings())
    broker.memory_limit = 2000
    peer = ready_peer(broker)
    peer.connection.client_properties["capabilities"]["connection.blocked"] = True  # type: ignore[index]
    declare(peer, "q")
    peer.publish(1, "", "q", b"x" * 3000)
    assert broker.check_memory()
    blocked = [v for _, v in peer.read() if isinstance(v, commands.Connection.Blocked)]
    assert blocked
    peer.send(1, commands.Queue.Purge(queue="q"))
    assert not broker.check_memory()
    assert [v for _, v in peer.read() if isinstance(v, commands.Connection.Unblocked)]
