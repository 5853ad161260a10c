"""An operator's reset or deletion of a consumer group (StreamQueue.reset_group and
delete_group): durable in ``groups.log``, refused under consumers, and not undone by a late
ack of a member that left. The management API and ``amqpd ctl`` over a real broker are in
interop/test_stream_group_reset.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amqpd.broker.vhost import VirtualHost
from amqpd.streams import StreamTypes
from amqpd.streams.arguments import OffsetSpec
from amqpd.streams.groups import GROUPS_FILE, GroupInUseError, GroupStore
from amqpd.streams.queue import StreamQueue
from tests.streams.test_dispatch_work import Channel, declare, publish


def test_store_deletions_survive_reopening_and_are_compacted(tmp_path: Path) -> None:
    store = GroupStore(tmp_path)
    store.write({"a": 3, "b": 5})
    store.forget("a")
    store.write({"b": 6})
    store.close()
    reopened = GroupStore(tmp_path)
    assert reopened.offsets == {"b": 6}
    reopened.close()
    assert (tmp_path / GROUPS_FILE).read_bytes() == b'["b", 6]\n'  # compacted when opened


def _stream_with_a_group_that_left(vhost: VirtualHost) -> tuple[Channel, StreamQueue]:
    """A group member that took 10, acked 4 and was cancelled with 6 still unacked."""
    stream = declare(vhost)
    publish(stream, 10)
    channel = Channel("c")
    consumer = channel.consume(stream, prefetch=10, group="g")
    channel.settle(4)
    channel.cancel(consumer)
    return channel, stream


def test_reset_is_durable_and_a_late_ack_does_not_undo_it(tmp_path: Path) -> None:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path)
    vhost.queue_types["stream"] = types.create
    channel, stream = _stream_with_a_group_that_left(vhost)
    assert stream.group_lag() == {"g": (4, 6)}
    assert stream.reset_group("g", OffsetSpec("offset", 1)) == 1
    channel.settle()  # the old member acks its 6: the group it counted for is gone
    for handle in stream.sync_handles():  # as the broker's group commit does
        os.fsync(handle)
        os.close(handle)
    assert stream.group_lag() == {"g": (1, 9)}
    directory = stream.directory
    types.close()
    assert GroupStore(directory).offsets == {"g": 1}
    # The next member starts at the reset offset.
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path)
    vhost.queue_types["stream"] = types.create
    stream = declare(vhost)
    member = Channel("d")
    member.consume(stream, prefetch=3, group="g")
    assert [entry.seq for _, entry in member.unacked] == [1, 2, 3]
    types.close()


def test_refused_under_consumers_and_delete_forgets(tmp_path: Path) -> None:
    vhost = VirtualHost("/")
    types = StreamTypes(tmp_path)
    vhost.queue_types["stream"] = types.create
    stream = declare(vhost)
    publish(stream, 3)
    channel = Channel("c")
    consumer = channel.consume(stream, prefetch=3, group="g")
    with pytest.raises(GroupInUseError, match="has 1 consumer"):
        stream.reset_group("g", OffsetSpec("first"))
    with pytest.raises(GroupInUseError):
        stream.delete_group("g")
    channel.settle()
    channel.cancel(consumer)
    assert stream.delete_group("g") is True
    assert stream.group_lag() == {}
    assert stream.delete_group("g") is False
    directory = stream.directory
    types.close()
    assert GroupStore(directory).offsets == {}
