"""A hypothesis state machine over publish / get / consume / ack / nack / reject / recover /
channel close: every message is always in exactly one place -- ready in the queue, unacked on
the channel, or settled -- and credit never exceeds the prefetch."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pamqp import commands

from amqpd.broker.message import QueueEntry

from .amqp_client import Peer

PREFETCH = 3


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.peer = Peer()
        self.published = 0
        self.settled: set[bytes] = set()  # acked, or dropped by reject/nack without requeue
        self.channel_id = 1

    @initialize()
    def open(self) -> None:
        self.peer.handshake()
        self.peer.open_channel(self.channel_id)
        self.peer.send(self.channel_id, commands.Queue.Declare(queue="q"),
                       commands.Basic.Qos(prefetch_count=PREFETCH))

    @property
    def channel(self) -> Any:
        return self.peer.connection.channels[self.channel_id]

    @property
    def queue(self) -> Any:
        return self.peer.broker.vhosts["/"].queues["q"]

    def _send(self, *frames: Any) -> None:
        self.peer.send(self.channel_id, *frames)

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        for _ in range(count):
            self.published += 1
            self.peer.publish(self.channel_id, "", "q", str(self.published).encode())

    @rule(no_ack=st.booleans())
    def get(self, no_ack: bool) -> None:
        frames = self.peer.send(self.channel_id, commands.Basic.Get(queue="q", no_ack=no_ack))
        if no_ack and isinstance(frames[0][1], commands.Basic.GetOk):
            self.settled.add(frames[2][1].value if len(frames) > 2 else b"")

    @rule()
    def consume(self) -> None:
        if "c" not in self.channel.consumers:
            self._send(commands.Basic.Consume(queue="q", consumer_tag="c"))

    @rule()
    def cancel(self) -> None:
        self._send(commands.Basic.Cancel(consumer_tag="c"))

    def _pick(self, data: st.DataObject) -> int | None:
        tags = list(self.channel.unacked)
        return data.draw(st.sampled_from(tags)) if tags else None

    def _settle(self, tags: list[int], drop: bool) -> None:
        if drop:
            self.settled.update(self.channel.unacked[t].entry.message.body for t in tags)

    def _covered(self, tag: int, multiple: bool) -> list[int]:
        return [t for t in self.channel.unacked if t <= tag] if multiple else [tag]

    @rule(data=st.data(), multiple=st.booleans())
    def ack(self, data: st.DataObject, multiple: bool) -> None:
        tag = self._pick(data)
        if tag is not None:
            self._settle(self._covered(tag, multiple), drop=True)
            self._send(commands.Basic.Ack(delivery_tag=tag, multiple=multiple))

    @rule(data=st.data(), multiple=st.booleans(), requeue=st.booleans())
    def nack(self, data: st.DataObject, multiple: bool, requeue: bool) -> None:
        tag = self._pick(data)
        if tag is not None:
            self._settle(self._covered(tag, multiple), drop=not requeue)
            self._send(commands.Basic.Nack(delivery_tag=tag, multiple=multiple,
                                           requeue=requeue))

    @rule(data=st.data(), requeue=st.booleans())
    def reject(self, data: st.DataObject, requeue: bool) -> None:
        tag = self._pick(data)
        if tag is not None:
            self._settle([tag], drop=not requeue)
            self._send(commands.Basic.Reject(delivery_tag=tag, requeue=requeue))

    @rule()
    def recover(self) -> None:
        self._send(commands.Basic.Recover(requeue=True))

    @rule()
    def reopen_channel(self) -> None:
        self._send(commands.Channel.Close(200, "", 0, 0))
        self.channel_id += 1
        self.peer.open_channel(self.channel_id)
        self._send(commands.Basic.Qos(prefetch_count=PREFETCH))

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        if self.channel_id not in self.peer.connection.channels:
            return
        ready = [e.message.body for e in self.queue.ready if e.state is QueueEntry.READY]
        unacked = [d.entry.message.body for d in self.channel.unacked.values()]
        places = ready + unacked + sorted(self.settled)
        assert len(places) == len(set(places)), "a message is in two places"
        assert set(places) == {str(n).encode() for n in range(1, self.published + 1)}
        assert self.queue.message_count == len(ready)

    @invariant()
    def credit_stays_within_prefetch(self) -> None:
        if self.channel_id not in self.peer.connection.channels:
            return
        for consumer in self.channel.consumers.values():
            assert 0 <= consumer.unacked <= PREFETCH


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                          deadline=None)
TestQueueMachine = QueueMachine.TestCase
