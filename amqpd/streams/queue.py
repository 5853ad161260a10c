"""A stream as the rest of the broker sees it: a :class:`~amqpd.broker.queue.Queue` whose
messages are appended to a segment log and read by every consumer from its own offset.

Theory of operation:
- ``push`` appends the encoded message to the log and tells the journal that something
  outside the store must be synced before the current batch counts as committed, so a
  publisher confirm goes out only after the append is fsync'd (see :mod:`amqpd.streams`).
- Each plain consumer has a :class:`ConsumerState` with its own cursor; a consumer with
  ``x-stream-group`` shares its group's cursor (:mod:`amqpd.streams.groups`). ``dispatch``
  reads from the log only as far as consumers have credit: deliveries are built from the
  log's bytes as they go out, nothing is queued per consumer.
- Settling: an ack (or a nack/reject, which RabbitMQ 3.13+ also treats as settled) frees
  credit; for a group it also lets the commit move on. A requeue or a closed channel gives
  a group's offsets back for another member; plain consumers never get redeliveries (a
  stream is not consumed destructively).
- Retention runs when a segment rolls and at most once a second on publish.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from amqpd.broker.message import QueueEntry
from amqpd.broker.queue import Queue
from amqpd.protocol.errors import ConnectionLevelError
from amqpd.streams import content
from amqpd.streams.arguments import ConsumeSpec, OffsetSpec, StreamSettings, parse_consume
from amqpd.streams.groups import Group, GroupStore
from amqpd.streams.log import Cursor, SegmentLog

if TYPE_CHECKING:
    from amqpd.broker.consumer import QueueConsumer
    from amqpd.broker.message import Message
    from amqpd.broker.vhost import VirtualHost

LOGGER = logging.getLogger(__name__)
RETENTION_EVERY = 1.0  # seconds between retention checks on publish


class StreamEntry(QueueEntry):
    """A delivery from a stream: ``seq`` is the offset, ``group`` the group it counts for."""

    __slots__ = ("group",)

    group: Group | None


class ConsumerState:
    """What a stream knows of one consumer: its spec and, outside groups, its cursor."""

    __slots__ = ("cursor", "group", "spec")

    def __init__(self, spec: ConsumeSpec, cursor: Cursor | None, group: Group | None):
        self.spec = spec
        self.cursor = cursor
        self.group = group


def _wanted(spec: ConsumeSpec, stored: content.StoredMessage) -> bool:
    """Exact filtering: ``x-stream-filter`` (any of the values), ``x-stream-match-unfiltered``
    for messages without a filter value, and ``x-stream-filter-rule``."""
    filters = spec.filters
    if filters is not None:
        value = stored.filter
        if value is None:
            if not spec.match_unfiltered:
                return False
        elif value not in filters:
            return False
    rule = spec.rule
    if rule is not None:
        from exchanges.rulelang import Context

        return bool(rule.predicate.test(Context(stored.message)))
    return True


class StreamQueue(Queue):
    """One stream."""

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        arguments: dict[str, object],
        settings: StreamSettings,
        directory: Path,
    ):
        super().__init__(name, vhost.name, durable=True, arguments=arguments, hooks=vhost)
        self.vhost = vhost
        self.settings = settings
        self.directory = directory
        self.log = SegmentLog(directory, settings.segment_bytes, settings.max_bytes,
                              settings.max_age_ms)
        self.group_store = GroupStore(directory)
        self.groups: dict[str, Group] = {}
        self.states: dict[QueueConsumer, ConsumerState] = {}
        self._next_retention = 0.0
        self._dropped_seen = 0
        self.log.apply_retention()

    def __repr__(self) -> str:
        log = self.log
        return f"<StreamQueue {self.name!r} offsets={log.first_offset}..{log.next_offset}>"

    # -- what RabbitMQ reports and refuses ---------------------------------------------

    @property
    def message_count(self) -> int:
        """RabbitMQ reports 0 for a stream in declare-ok (nothing is "ready")."""
        return 0

    @property
    def has_ready(self) -> bool:
        """Some consumer may be behind the end of the log."""
        return bool(self.consumers)

    def take(self) -> QueueEntry | None:
        """basic.get: 540 NOT_IMPLEMENTED, as RabbitMQ."""
        raise ConnectionLevelError(
            540, f"basic.get not supported by stream queues {self.describe()}", 60, 70)

    def purge(self) -> int:
        """queue.purge: 540 NOT_IMPLEMENTED, as RabbitMQ."""
        raise ConnectionLevelError(
            540, f"queue.purge not supported by stream queues {self.describe()}", 50, 30)

    def check_consume(
        self, no_ack: bool, prefetch_count: int, arguments: Mapping[str, object]
    ) -> None:
        """Refuse a basic.consume before consume-ok (RabbitMQ's codes)."""
        parse_consume(arguments, self.describe(), no_ack, prefetch_count)

    # -- publishing --------------------------------------------------------------------

    def push(self, message: Message) -> bool:
        """Append a routed message to the log; confirmed once the journal's batch commits."""
        self.stat_publish += 1
        log = self.log
        log.append(content.encode(message))
        self.vhost.journal.mark_external()
        now = time.monotonic()
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY
            log.apply_retention()
        if log.dropped_segments != self._dropped_seen:
            self._after_retention()
        if self.consumers:
            self.dispatch()
        return True

    def _after_retention(self) -> None:
        self._dropped_seen = self.log.dropped_segments
        first = self.log.first_offset
        for group in self.groups.values():
            if group.committed < first:
                LOGGER.warning(
                    "group '%s' of %s: committed offset %d fell out of retention; it "
                    "continues at the first offset %d", group.name, self.describe(),
                    group.committed, first)
                group.outstanding = {o for o in group.outstanding if o >= first}
                group.redeliver = [o for o in group.redeliver if o >= first]
                if group.cursor.offset < first:
                    group.cursor.seek(first)
                group.dirty = True

    # -- consumers ---------------------------------------------------------------------

    def _start(self, spec: OffsetSpec | None) -> int:
        log = self.log
        if spec is None or spec.kind == "next":
            return log.next_offset
        if spec.kind == "first":
            return log.first_offset
        if spec.kind == "last":
            # RabbitMQ: the start of the last chunk; amqpd has no chunks: the last message.
            return max(log.next_offset - 1, log.first_offset)
        if spec.kind == "offset":
            return log.clamp(spec.value)
        if spec.kind == "timestamp":
            return log.offset_at_time(spec.value)
        return log.offset_at_time(int(time.time() * 1000) - spec.value)  # age

    def add_consumer(self, consumer: QueueConsumer, priority: int = 0) -> None:
        """Attach a consumer at the offset its arguments name (or its group's commit)."""
        arguments = dict(consumer.arguments)
        spec = parse_consume(arguments, self.describe(), False, 1)
        if spec.group is None:
            state = ConsumerState(spec, Cursor(self.log, self._start(spec.offset)), None)
        else:
            group = self.groups.get(spec.group)
            if group is None:
                group = self._open_group(spec)
            group.members.append(consumer)
            state = ConsumerState(group.spec or spec, None, group)
        self.states[consumer] = state
        self.consumers.append(consumer)
        self.had_consumers = True
        self.last_used = time.monotonic()
        self.dispatch()

    def _open_group(self, spec: ConsumeSpec) -> Group:
        """A group's first member since the broker started: resume at the committed offset,
        or start where ``x-stream-offset`` says when the group never committed."""
        assert spec.group is not None
        stored = self.group_store.offsets.get(spec.group)
        if stored is None:
            start = self._start(spec.offset)
        else:
            start = stored
            if stored < self.log.first_offset:
                LOGGER.warning(
                    "group '%s' of %s: committed offset %d fell out of retention; it "
                    "restarts at the first offset %d", spec.group, self.describe(), stored,
                    self.log.first_offset)
        group = Group(spec.group, Cursor(self.log, start), stored)
        group.spec = spec
        if stored is None or stored != group.cursor.offset:
            group.dirty = True  # the group's start is its first commit
            self._commit_soon()
        self.groups[spec.group] = group
        return group

    def remove_consumer(self, consumer: QueueConsumer) -> None:
        """Detach a consumer (a group keeps its position for the next member)."""
        state = self.states.pop(consumer, None)
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if state is not None and state.group is not None:
            state.group.members.remove(consumer)
        self.last_used = time.monotonic()
        if self.consumers:
            self.dispatch()

    # -- delivering --------------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver to every consumer as far as its credit goes."""
        for consumer, state in list(self.states.items()):
            if state.group is None and state.cursor is not None:
                self._feed(consumer, state.cursor, state.spec)
        for group in self.groups.values():
            if group.members:
                self._feed_group(group)

    def _feed(self, consumer: QueueConsumer, cursor: Cursor, spec: ConsumeSpec) -> None:
        while not cursor.at_end and consumer.can_take():
            records = cursor.read(1)
            if not records:
                return
            record = records[0]
            stored = content.StoredMessage(record.payload)
            if _wanted(spec, stored):
                self._deliver(consumer, record.offset, stored.message, None)

    def _feed_group(self, group: Group) -> None:
        members = group.members
        spec = group.spec
        assert spec is not None
        turn = 0
        idle = 0
        # Round-robin by credit: each member in turn takes one message while it can.
        while idle < len(members):
            member = members[turn % len(members)]
            turn += 1
            if not member.can_take():
                idle += 1
                continue
            offset = group.take_redelivery(self.log)
            if offset is not None:
                records = self.log.read(offset, 1)
                if records:
                    stored = content.StoredMessage(records[0].payload)
                    group.outstanding.add(offset)
                    self._deliver(member, offset, stored.message, group, True)
                idle = 0
                continue
            delivered = False
            while not group.cursor.at_end:
                records = group.cursor.read(1)
                if not records:
                    break
                stored = content.StoredMessage(records[0].payload)
                group.dirty = True
                if _wanted(spec, stored):
                    group.outstanding.add(records[0].offset)
                    self._deliver(member, records[0].offset, stored.message, group)
                    delivered = True
                    break
            if not delivered:
                return
            idle = 0

    def _deliver(
        self, consumer: QueueConsumer, offset: int, message: Message, group: Group | None,
        redelivered: bool = False,
    ) -> None:
        entry = StreamEntry(content.with_offset(message, offset), offset)
        entry.group = group
        entry.state = QueueEntry.DELIVERED
        entry.redelivered = redelivered
        self.stat_deliver_get += 1
        consumer.deliver(entry)

    # -- settling ----------------------------------------------------------------------

    def _settle(self, entry: QueueEntry) -> None:
        if entry.state is not QueueEntry.DELIVERED:
            return
        entry.state = QueueEntry.GONE
        group = entry.group if isinstance(entry, StreamEntry) else None
        if group is not None:
            group.settled(entry.seq)
            self._commit_soon()

    def acknowledge(self, entry: QueueEntry) -> None:
        """An ack frees credit (the channel counts it); a group's commit may move on."""
        self.stat_ack += 1
        self._settle(entry)

    def reject(self, entry: QueueEntry) -> None:
        """nack/reject without requeue: settled like an ack (RabbitMQ 3.13+), never
        dead-lettered."""
        self._settle(entry)

    def requeue(self, entries: Iterable[QueueEntry]) -> None:
        """Plain consumers: settled (a stream does not redeliver). Group members: the offsets
        go back to the group for the next member with credit."""
        for entry in entries:
            group = entry.group if isinstance(entry, StreamEntry) else None
            if group is None or self.deleted:
                self._settle(entry)
                continue
            entry.state = QueueEntry.GONE
            group.returned(entry.seq)
            self.stat_redeliver += 1
        if self.consumers:
            self.dispatch()

    def _commit_soon(self) -> None:
        self.vhost.journal.mark_external()

    # -- durability (called by amqpd.streams.StreamTypes around each group commit) ------

    def sync_handles(self) -> list[int]:
        """Write what is buffered (appends, changed group commits); descriptors to fsync."""
        commits = {}
        for group in self.groups.values():
            if group.dirty:
                group.dirty = False
                committed = group.committed
                if committed != group.stored:
                    group.stored = committed
                    commits[group.name] = committed
        handles = self.log.sync_handles()
        if commits:
            self.group_store.write(commits)
        handle = self.group_store.sync_handle()
        if handle is not None:
            handles.append(handle)
        return handles

    def group_lag(self) -> dict[str, tuple[int, int]]:
        """Per group: (committed offset, messages behind the end of the stream)."""
        end = self.log.next_offset
        names = set(self.group_store.offsets) | set(self.groups)
        out = {}
        for name in sorted(names):
            group = self.groups.get(name)
            committed = group.committed if group is not None else self.group_store.offsets[name]
            out[name] = (committed, max(end - max(committed, self.log.first_offset), 0))
        return out

    def group_report(self) -> list[dict[str, object]]:
        """Each consumer group as the management API, ``amqpd ctl list_stream_groups`` and
        Prometheus show it: committed offset, lag, consumers now."""
        return [
            {"group": name, "committed_offset": committed, "lag": lag,
             "consumers": len(self.groups[name].members) if name in self.groups else 0}
            for name, (committed, lag) in self.group_lag().items()
        ]

    def on_deleted(self) -> None:
        """The stream was deleted: its files go too."""
        super().on_deleted()
        self.states.clear()
        self.groups.clear()
        self.log.close()
        self.group_store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        """Flush and close the files (broker shutdown)."""
        self.log.close()
        self.group_store.close()
