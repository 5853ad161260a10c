"""A stream as the rest of the broker sees it: a :class:`~amqpd.broker.queue.Queue` whose
messages are appended to a segment log and read by every consumer from its own offset.

Theory of operation:
- ``push`` appends the encoded message to the log and tells the journal that something
  outside the store must be synced before the current batch counts as committed, so a
  publisher confirm goes out only after the append is fsync'd (see :mod:`amqpd.streams`).
- Each plain consumer has a :class:`ConsumerState` with its own cursor; a consumer with
  ``x-stream-group`` shares its group's cursor (:mod:`amqpd.streams.groups`). Feeding a
  *reader* (a plain consumer's state, or a group) reads from the log only as far as its
  consumers have credit: deliveries are built from the log's bytes as they go out, nothing
  is queued per consumer.
- Only readers that may deliver are visited, so the work per event does not grow with the
  number of readers: a reader that stopped is either *caught up* (at the end of the log:
  fed again by ``push``) or *stalled* (behind, but no consumer could take: fed again by a
  ``dispatch``). An ack, reject or requeue *wakes* the reader of that delivery, and the
  ``dispatch`` the channel runs right after its settles feeds only the woken readers; any
  other ``dispatch`` (output drained, channel.flow, basic.qos) also feeds every stalled
  reader. A channel with a global prefetch shares its credit among its consumers, so a
  settle there is followed by a full dispatch as well.
- Settling: an ack (or a nack/reject, which RabbitMQ 3.13+ also treats as settled) frees
  credit; for a group it also lets the commit move on. A requeue or a closed channel gives
  a group's offsets back for another member; plain consumers never get redeliveries (a
  stream is not consumed destructively).
- Who in a group receives: every member (shared), the first member only
  (``x-single-active-consumer``), or, for a stream bound to an ``x-consistent-hash``
  exchange, the member the partitioned group assigned it to; a new owner waits until the
  old one's deliveries are settled or given back (:mod:`amqpd.streams.groups`,
  :mod:`amqpd.streams.partitions`). ``dispatch`` notices binding changes by the journal's
  ``definitions_version``.
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
from amqpd.protocol.errors import ChannelError, ConnectionLevelError
from amqpd.streams import content, partitions
from amqpd.streams.arguments import ConsumeSpec, OffsetSpec, StreamSettings, parse_consume
from amqpd.streams.groups import Group, GroupInUseError, GroupStore
from amqpd.streams.log import Cursor, SegmentLog
from amqpd.streams.partitions import PartitionedGroup

if TYPE_CHECKING:
    from amqpd.broker.consumer import ConsumerMember, QueueConsumer
    from amqpd.broker.message import Message
    from amqpd.broker.vhost import VirtualHost

LOGGER = logging.getLogger(__name__)
RETENTION_EVERY = 1.0  # seconds between retention checks on publish


class StreamEntry(QueueEntry):
    """A delivery from a stream: ``seq`` is the offset, ``group`` the group it counts for
    and ``member`` the group member (channel) it went to; ``reader`` the plain consumer's
    state it went to (None for a group's delivery)."""

    __slots__ = ("group", "member", "reader")

    group: Group | None
    member: ConsumerMember
    reader: ConsumerState | None


class ConsumerState:
    """What a stream knows of one consumer: its spec and, outside groups, its cursor."""

    __slots__ = ("consumer", "cursor", "detached", "group", "member", "spec")

    def __init__(self, consumer: QueueConsumer, spec: ConsumeSpec, cursor: Cursor | None,
                 group: Group | None):
        self.consumer = consumer
        self.member = consumer.member  # its channel, asked on every ack
        self.spec = spec
        self.cursor = cursor
        self.group = group
        self.detached = False  # the consumer left: a late ack must not feed it


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
        # Group name -> its partitioned group, while this stream is a partition of one.
        self.coordinators: dict[str, PartitionedGroup] = {}
        self._definitions_seen = vhost.journal.definitions_version
        # The readers (plain consumers' states and groups with members) by what they wait
        # for: every reader is in one of the first two after it was fed (see the module's
        # docstring); ``woken`` got credit back since.
        self._caught_up: dict[ConsumerState | Group, None] = {}
        self._stalled: dict[ConsumerState | Group, None] = {}
        self._woken: dict[ConsumerState | Group, None] = {}
        self._feeding: ConsumerState | Group | None = None  # the reader being fed now
        # Set by a settle, consumed by the dispatch that follows it (see ``dispatch``).
        self._after_settle = False
        self._sweep_due = False
        # The groups whose committed offset may have moved since the last sync.
        self._dirty_groups: list[Group] = []
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
        """A reader is behind the end of the log and waits for credit, or just got credit
        back: only then can a ``dispatch`` deliver (a caught-up reader is fed by ``push``)."""
        return bool(self._woken) or bool(self._stalled)

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
        """Refuse a basic.consume before consume-ok (RabbitMQ's codes; 406 for an
        x-single-active-consumer that differs from the group's members)."""
        spec = parse_consume(arguments, self.describe(), no_ack, prefetch_count)
        if spec.group is None:
            return
        current = partitions.exclusive_setting(self, spec.group)
        if current is not None and current != spec.exclusive:
            raise ChannelError(
                406, f"invalid arg 'x-single-active-consumer' for {self.describe()}: "
                     f"consumer group '{spec.group}' has members with "
                     f"x-single-active-consumer={str(current).lower()}", 60, 20)

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
            self._check_definitions()
            self._run(list(self._caught_up))  # a stalled reader has data already
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
                self._commit_due(group)

    # -- consumers ---------------------------------------------------------------------

    def _start(self, spec: OffsetSpec | None) -> int:
        log = self.log
        if spec is None or spec.kind == "next":
            return log.next_offset
        if spec.kind == "first":
            return log.first_offset
        if spec.kind == "last":
            # RabbitMQ: the start of the last chunk; amqpd: the last message (its chunks
            # are how the log stores records, not what a consumer starts at).
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
            state = ConsumerState(consumer, spec, Cursor(self.log, self._start(spec.offset)),
                                  None)
        else:
            group = self.groups.get(spec.group)
            if group is None:
                group = self._open_group(spec)
            if not group.members:
                group.exclusive = spec.exclusive
            group.members.append(consumer)
            state = ConsumerState(consumer, group.spec or spec, None, group)
        self.states[consumer] = state
        self.consumers.append(consumer)
        self.had_consumers = True
        self.last_used = time.monotonic()
        if state.group is not None:
            state.group.members_changed()
            partitions.regroup(self, state.group, consumer.member)
        self._check_definitions()
        self._run([state] if state.group is None else [state.group])

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
            self._commit_due(group)  # the group's start is its first commit
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
        self.last_used = time.monotonic()
        if state is None:
            return
        group = state.group
        if group is None:
            state.detached = True
            self._forget(state)
            return
        group.members.remove(consumer)
        group.members_changed()
        partitions.regroup(self, group, None)
        self._check_definitions()
        # Another member may take over now (the next of an exclusive group, say).
        self._run([group])

    # -- delivering --------------------------------------------------------------------

    def dispatch(self) -> None:
        """Deliver as far as credit goes. Right after settles (``Channel._settle`` acks, then
        dispatches) only the readers those settles woke can deliver more; otherwise
        something outside the stream may have let consumers take again (the output drained,
        channel.flow, basic.qos), so every stalled reader is fed too."""
        self._check_definitions()
        sweep = self._sweep_due or not self._after_settle
        self._after_settle = self._sweep_due = False
        self._run(list(self._stalled) if sweep else [])

    def dispatch_group(self, group: Group) -> None:
        """Feed one group whose owner changed (:mod:`amqpd.streams.partitions`)."""
        self._run([group])

    def _check_definitions(self) -> None:
        """A binding may have made this stream a partition, or stopped it being one."""
        if self.groups:
            version = self.vhost.journal.definitions_version
            if version != self._definitions_seen:
                self._definitions_seen = version
                partitions.bindings_changed(self)

    def _run(self, readers: list[ConsumerState | Group]) -> None:
        """Feed ``readers``, then every reader woken meanwhile."""
        for reader in readers:
            self._visit(reader)
        woken = self._woken
        while woken:
            readers = list(woken)
            woken.clear()
            for reader in readers:
                self._visit(reader)
        # A settle that no dispatch followed (none does while the stream has no consumers)
        # must not make a later dispatch skip the stalled readers.
        self._after_settle = self._sweep_due = False

    def _visit(self, reader: ConsumerState | Group) -> None:
        """Feed one reader and file it under what it waits for now."""
        if isinstance(reader, Group):
            if not reader.members:
                self._forget(reader)  # it waits for a member to join
                return
        elif reader.detached:
            return
        outer = self._feeding
        self._feeding = reader
        try:
            behind = self._feed_group(reader) if isinstance(reader, Group) \
                else self._feed(reader)
        finally:
            self._feeding = outer
        if behind:
            self._caught_up.pop(reader, None)
            self._stalled[reader] = None
        else:
            self._stalled.pop(reader, None)
            self._caught_up[reader] = None

    def _forget(self, reader: ConsumerState | Group) -> None:
        self._caught_up.pop(reader, None)
        self._stalled.pop(reader, None)
        self._woken.pop(reader, None)

    def _credit_back(self, reader: ConsumerState | Group, member: ConsumerMember) -> None:
        """A delivery of ``reader`` (to ``member``, a channel) was settled or given back."""
        if self._feeding is not None:
            # Settled while the stream delivers: a no-ack delivery, which frees no credit;
            # and no dispatch follows it, so it must not mark one as after-settle.
            if reader is not self._feeding:
                self._woken[reader] = None
            return
        woken = self._woken
        if isinstance(reader, ConsumerState) and reader in woken:
            return  # an earlier settle of this batch woke it (one channel: already asked)
        woken[reader] = None
        self._after_settle = True
        if member.shares_credit():
            self._sweep_due = True  # any stalled consumer of that channel may take now

    def _feed(self, state: ConsumerState) -> bool:
        """Deliver to a plain consumer; True when it stopped behind the end of the log."""
        consumer = state.consumer
        cursor = state.cursor
        assert cursor is not None
        spec = state.spec
        while not cursor.at_end:
            if not consumer.can_take():
                return True
            records = cursor.read(1)
            if not records:
                return False
            record = records[0]
            stored = content.StoredMessage(record.payload)
            if _wanted(spec, stored):
                self._deliver(consumer, record.offset, stored.message, None, state)
        return False

    def _feed_group(self, group: Group) -> bool:
        """Deliver to a group's members; True when it stopped with offsets still to deliver
        (behind the end of the log, or redeliveries)."""
        if group.handing_over:
            return True  # the previous owner's deliveries are settled or given back first
        members = group.active
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
                    self._deliver(member, offset, stored.message, group, None, True)
                idle = 0
                continue
            delivered = False
            while not group.cursor.at_end:
                records = group.cursor.read(1)
                if not records:
                    break
                stored = content.StoredMessage(records[0].payload)
                if not group.dirty:
                    self._commit_due(group)
                if _wanted(spec, stored):
                    group.outstanding.add(records[0].offset)
                    self._deliver(member, records[0].offset, stored.message, group, None)
                    delivered = True
                    break
            if not delivered:
                return False
            idle = 0
        return not group.cursor.at_end or bool(group.redeliver)

    def _deliver(
        self, consumer: QueueConsumer, offset: int, message: Message, group: Group | None,
        reader: ConsumerState | None, redelivered: bool = False,
    ) -> None:
        entry = StreamEntry(content.with_offset(message, offset), offset)
        entry.group = group
        entry.reader = reader
        if group is not None:
            # Counted here, not by a Group method: this module is compiled, groups.py
            # is not, and this runs once per delivery.
            member = consumer.member
            entry.member = member
            owed = group.owed
            owed[member] = owed.get(member, 0) + 1
        entry.state = QueueEntry.DELIVERED
        entry.redelivered = redelivered
        self.stat_deliver_get += 1
        consumer.deliver(entry)

    # -- settling ----------------------------------------------------------------------

    def _settle(self, entry: QueueEntry) -> None:
        if entry.state is not QueueEntry.DELIVERED:
            return
        entry.state = QueueEntry.GONE
        if not isinstance(entry, StreamEntry):
            return
        group = entry.group
        if group is not None:
            group.settled(entry.seq, entry.member)
            self._commit_due(group)
            self._commit_soon()
            self._credit_back(group, entry.member)
        else:
            reader = entry.reader
            if reader is not None:
                self._credit_back(reader, reader.member)

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
            if not isinstance(entry, StreamEntry) or entry.group is None or self.deleted:
                self._settle(entry)
                continue
            if entry.state is not QueueEntry.DELIVERED:
                continue
            entry.state = QueueEntry.GONE
            entry.group.returned(entry.seq, entry.member)
            self._credit_back(entry.group, entry.member)
            self.stat_redeliver += 1
        if self.consumers:
            self.dispatch()

    def _commit_soon(self) -> None:
        self.vhost.journal.mark_external()

    def _commit_due(self, group: Group) -> None:
        """``group``'s committed offset may have moved: look at it on the next sync (a list,
        so that a sync does not visit every group of the stream)."""
        if not group.dirty:
            group.dirty = True
            self._dirty_groups.append(group)

    # -- durability (called by amqpd.streams.StreamTypes around each group commit) ------

    def sync_handles(self) -> list[int]:
        """Write what is buffered (appends, changed group commits); descriptors to fsync."""
        commits = {}
        dirty = self._dirty_groups
        if dirty:
            self._dirty_groups = []
            for group in dirty:
                group.dirty = False
                if self.groups.get(group.name) is not group:
                    continue  # reset or deleted by an operator: a late ack moves nothing
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

    # -- operators' changes ------------------------------------------------------------

    def reset_group(self, name: str, offset: OffsetSpec) -> int:
        """Move a group with no consumers to ``offset`` (replay, or skip a backlog); its next
        member starts there. Returns the new committed offset, durable on return.

        Raises:
            GroupInUseError: the group has consumers.
        """
        self._drop_idle_group(name)
        start = self._start(offset)
        self.group_store.write({name: start})
        self.group_store.sync()
        LOGGER.info("group '%s' of %s reset to offset %d", name, self.describe(), start)
        return start

    def delete_group(self, name: str) -> bool:
        """Forget a group with no consumers and its committed offset; False when there was
        no such group.

        Raises:
            GroupInUseError: the group has consumers.
        """
        known = name in self.groups or name in self.group_store.offsets
        self._drop_idle_group(name)
        if known:
            self.group_store.forget(name)
            self.group_store.sync()
            LOGGER.info("group '%s' of %s deleted", name, self.describe())
        return known

    def _drop_idle_group(self, name: str) -> None:
        """Drop the group's live state (what it still owed is given up with it)."""
        group = self.groups.get(name)
        if group is None:
            return
        if group.members:
            raise GroupInUseError(f"group '{name}' of {self.describe()} has {len(group.members)} "
                             "consumer(s): cancel them first")
        del self.groups[name]
        self._forget(group)

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
        rows: list[dict[str, object]] = []
        for name, (committed, lag) in self.group_lag().items():
            group = self.groups.get(name)
            row: dict[str, object] = {
                "group": name, "committed_offset": committed, "lag": lag,
                "consumers": len(group.members) if group is not None else 0}
            if group is not None and group.restricted:
                # Exclusive and partitioned groups: who receives now, and whether it waits
                # for the previous owner's deliveries.
                row["active_consumers"] = [consumer.tag for consumer in group.active]
                row["handing_over"] = group.handing_over
                if group.exclusive:
                    row["single_active_consumer"] = True
                coordinator = self.coordinators.get(name)
                if coordinator is not None:
                    row["partition_of"] = coordinator.exchange
            rows.append(row)
        return rows

    def on_deleted(self) -> None:
        """The stream was deleted: its files go too."""
        super().on_deleted()
        self.states.clear()
        self.groups.clear()
        self._caught_up.clear()
        self._stalled.clear()
        self._woken.clear()
        self._dirty_groups.clear()
        for coordinator in list(self.coordinators.values()):
            coordinator.rebalance()  # the other partitions are shared out again
        self.coordinators.clear()
        self.log.close()
        self.group_store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        """Flush and close the files (broker shutdown)."""
        self.log.close()
        self.group_store.close()
