"""Partitioned streams: the streams bound to one ``x-consistent-hash`` exchange are the
partitions of one logical stream; a consumer group over them gets each partition assigned
to exactly one member, so that every routing key (which the exchange always sends to the
same partition) is consumed in order inside the group.

Theory of operation:
- A *member* is a channel (``QueueConsumer.member``): it receives in order,
  holds the unacked deliveries and gives them back when it closes. A client consumes every
  partition with the same ``x-stream-group``, on one channel per member.
- The partitions are the streams bound to the exchange, sorted by name; a stream bound to
  several ``x-consistent-hash`` exchanges is a partition of the one with the lowest name.
  The set is read again whenever the vhost's definitions changed (a bind, an unbind, a
  delete: the journal's ``definitions_version``), noticed on the next dispatch of any
  partition with group members or on the next member that joins or leaves.
- One :class:`PartitionedGroup` per (exchange, group name), shared by its partitions
  (each stream keeps it in ``coordinators``; a new member finds it through the exchange's
  bindings, so nothing is global). It remembers the join order of the members.
- Assignment (:meth:`PartitionedGroup.rebalance`, on every join, leave and binding change)
  is sticky: a partition stays with its owner while that member still consumes it and
  holds no more than its fair share (partitions // members, one more for the first
  partitions % members members to reach it); every partition then left over goes, in name
  order, to the member consuming it that has the fewest partitions so far (ties: the member
  consuming fewer partitions, then the earliest joined); last, while a member consuming a
  partition has two fewer than its owner, it takes it over (members that consume only some
  of the partitions). So a join moves only what the newcomer takes (4 partitions
  dealt A B A B; a third member joins: A B A C -- one hand-over, not three) and a leave
  only the leaver's partitions. An exclusive group
  (``x-single-active-consumer``) gives every partition to its earliest member. The
  assignment depends only on the previous one and the members in join order, so a test can
  predict it.
- A partition moving from member A to member B is *restricted* to B at once, but B gets
  nothing while A still owes deliveries of that partition (``Group.handing_over``): A's
  unacked messages are acked, or given back (nack with requeue, a closed channel) and then
  redelivered to B first. So per-key order holds across a re-assignment. Members are not
  told: their consumers simply stop or start receiving (as RabbitMQ's single active
  consumer); the assignment is visible in the management API (``active_consumers``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Protocol

from amqpd.streams.groups import Group

if TYPE_CHECKING:
    from amqpd.broker.consumer import ConsumerMember
    from amqpd.broker.vhost import VirtualHost

PARTITIONING_TYPE = "x-consistent-hash"


class Partition(Protocol):
    """What partitioning uses of a stream (:class:`amqpd.streams.queue.StreamQueue`, which
    imports this module and so cannot be imported here)."""

    name: str
    deleted: bool
    vhost: VirtualHost
    groups: dict[str, Group]
    coordinators: dict[str, PartitionedGroup]

    def dispatch_group(self, group: Group) -> None:
        """Deliver to ``group``'s members as far as credit goes."""


def partitioning_exchange(stream: Partition) -> str | None:
    """The lowest-named ``x-consistent-hash`` exchange ``stream`` is bound to, or None."""
    best: str | None = None
    for exchange in stream.vhost.exchanges.values():
        kind = exchange.kind
        if exchange.type_name != PARTITIONING_TYPE or kind is None:
            continue
        if best is not None and exchange.name >= best:
            continue
        if any(binding.destination is stream for binding in kind.bindings()):
            best = exchange.name
    return best


def bound_partitions(vhost: VirtualHost, exchange_name: str,
                     stream_type: type[Partition]) -> list[Partition]:
    """The partitions of ``exchange_name``: its bound streams, sorted by name (one pass
    over the bindings of every ``x-consistent-hash`` exchange, not one per stream)."""
    lowest: dict[object, str] = {}  # destination -> its lowest-named such exchange
    for exchange in vhost.exchanges.values():
        kind = exchange.kind
        if exchange.type_name != PARTITIONING_TYPE or kind is None:
            continue
        name = exchange.name
        for binding in kind.bindings():
            current = lowest.get(binding.destination)
            if current is None or name < current:
                lowest[binding.destination] = name
    found = {destination.name: destination for destination, name in lowest.items()
             if name == exchange_name and isinstance(destination, stream_type)
             and not destination.deleted}
    return [found[name] for name in sorted(found)]


class PartitionedGroup:
    """One consumer group over the partitions of one ``x-consistent-hash`` exchange."""

    def __init__(self, vhost: VirtualHost, exchange: str, name: str,
                 stream_type: type[Partition]):
        self.vhost = vhost
        self.exchange = exchange
        self.name = name
        self.stream_type = stream_type
        self.partitions: list[Partition] = []
        self.joined: dict[ConsumerMember, int] = {}  # member -> join order
        self._order = itertools.count()
        self.version = -1  # the definitions version the partitions were read at
        self.assignment: dict[str, ConsumerMember | None] = {}  # partition name -> member

    def __repr__(self) -> str:
        return (f"<PartitionedGroup {self.name!r} of {self.exchange!r}: "
                f"{len(self.partitions)} partitions, {len(self.joined)} members>")

    @property
    def stale(self) -> bool:
        """Definitions changed since the partitions were read (a binding may have)."""
        return self.version != self.vhost.journal.definitions_version

    def join(self, member: ConsumerMember) -> None:
        """``member`` consumes a partition now (it keeps its place if it already did)."""
        if member not in self.joined:
            self.joined[member] = next(self._order)

    def exclusive_setting(self) -> bool | None:
        """x-single-active-consumer of the members now (None: no members)."""
        for partition in self.partitions:
            group = partition.groups.get(self.name)
            if group is not None and group.members:
                return group.exclusive
        return None

    def rebalance(self) -> None:
        """Read the partitions, assign each to one member, and let the partitions whose
        owner changed deliver (an owner still waits for the previous one's deliveries)."""
        self.version = self.vhost.journal.definitions_version
        current = bound_partitions(self.vhost, self.exchange, self.stream_type)
        kept = {id(partition) for partition in current}
        to_dispatch: list[tuple[Partition, Group]] = []
        for old in self.partitions:
            if id(old) not in kept:
                self._release(old, to_dispatch)
        self.partitions = current
        consumes: dict[ConsumerMember, set[str]] = {}  # member -> the partitions it consumes
        exclusive = False
        for partition in current:
            partition.coordinators[self.name] = self
            group = partition.groups.get(self.name)
            if group is not None and group.members:
                exclusive = exclusive or group.exclusive
                for consumer in group.members:
                    consumes.setdefault(consumer.member, set()).add(partition.name)
        for member in [m for m in self.joined if m not in consumes]:
            del self.joined[member]
        for member in consumes:
            self.join(member)
        order = sorted(consumes, key=self.joined.__getitem__)
        assignment = self._assign(current, order, consumes, exclusive)
        for partition in current:
            owner = assignment[partition.name]
            group = partition.groups.get(self.name)
            if group is not None and group.assign(True, owner):
                to_dispatch.append((partition, group))
        self.assignment = assignment
        for partition, group in to_dispatch:
            if not partition.deleted:
                partition.dispatch_group(group)

    def _assign(self, partitions: list[Partition], order: list[ConsumerMember],
                consumes: dict[ConsumerMember, set[str]], exclusive: bool,
                ) -> dict[str, ConsumerMember | None]:
        """Partition name -> owner: sticky within the fair share, then fewest-first."""
        assignment: dict[str, ConsumerMember | None] = {}
        load = dict.fromkeys(order, 0)
        if not exclusive and order:
            share, extra = divmod(len(partitions), len(order))
            for partition in partitions:
                previous = self.assignment.get(partition.name)
                if previous is None or partition.name not in consumes.get(previous, ()):
                    continue
                if load[previous] < share or (load[previous] == share and extra):
                    if load[previous] == share:
                        extra -= 1
                    assignment[partition.name] = previous
                    load[previous] += 1
        for partition in partitions:
            if partition.name in assignment:
                continue
            eligible = [m for m in order if partition.name in consumes[m]]
            owner: ConsumerMember | None = None
            if eligible:
                # min() keeps the first of equals, the earliest joined; before that, a
                # member that can take fewer partitions goes first.
                owner = eligible[0] if exclusive else min(
                    eligible, key=lambda m: (load[m], len(consumes[m])))
                load[owner] += 1
            assignment[partition.name] = owner
        if not exclusive:
            self._even_out(partitions, order, consumes, assignment, load)
        return assignment

    @staticmethod
    def _even_out(partitions: list[Partition], order: list[ConsumerMember],
                  consumes: dict[ConsumerMember, set[str]],
                  assignment: dict[str, ConsumerMember | None],
                  load: dict[ConsumerMember, int]) -> None:
        """Move a partition while a member consuming it has two fewer than its owner (the
        fair share ignores who consumes what: members consuming only some partitions).
        Each move lowers the sum of squared loads, so this ends."""
        moved = True
        while moved:
            moved = False
            for partition in partitions:
                owner = assignment[partition.name]
                if owner is None:
                    continue
                lightest = min((m for m in order if partition.name in consumes[m]),
                               key=load.__getitem__)
                if load[lightest] + 1 < load[owner]:
                    assignment[partition.name] = lightest
                    load[owner] -= 1
                    load[lightest] += 1
                    moved = True

    def _release(self, partition: Partition, to_dispatch: list[tuple[Partition, Group]]
                 ) -> None:
        """``partition`` is no longer one of ours: its group goes back to plain sharing."""
        if partition.coordinators.get(self.name) is self:
            del partition.coordinators[self.name]
        group = partition.groups.get(self.name)
        if group is not None and group.assign_alone():
            to_dispatch.append((partition, group))


def _coordinator_for(stream: Partition, name: str, exchange: str) -> PartitionedGroup:
    """The group's coordinator over ``exchange``, found through the other partitions."""
    stream_type = type(stream)
    for partition in bound_partitions(stream.vhost, exchange, stream_type):
        coordinator = partition.coordinators.get(name)
        if coordinator is not None and coordinator.exchange == exchange:
            return coordinator
    return PartitionedGroup(stream.vhost, exchange, name, stream_type)


def regroup(stream: Partition, group: Group, joined: ConsumerMember | None) -> None:
    """Decide who receives from ``group`` of ``stream`` after ``joined`` (a member) joined,
    a member left, or the bindings may have changed."""
    coordinator = stream.coordinators.get(group.name)
    if coordinator is not None and joined is None and not coordinator.stale \
            and any(p is stream for p in coordinator.partitions):
        coordinator.rebalance()
        return
    exchange = partitioning_exchange(stream)
    if coordinator is not None and coordinator.exchange != exchange:
        coordinator.rebalance()  # lets this stream go (now unbound, or another exchange's)
        coordinator = None
    if exchange is None:
        group.assign_alone()
        return
    if coordinator is None:
        coordinator = _coordinator_for(stream, group.name, exchange)
    if joined is not None:
        coordinator.join(joined)
    coordinator.rebalance()


def exclusive_setting(stream: Partition, name: str) -> bool | None:
    """x-single-active-consumer of group ``name``'s members on this stream or, for a
    partitioned group, on any partition (None: no members yet)."""
    group = stream.groups.get(name)
    if group is not None and group.members:
        return group.exclusive
    coordinator = stream.coordinators.get(name)
    if coordinator is None:
        exchange = partitioning_exchange(stream)
        if exchange is None:
            return None
        coordinator = _coordinator_for(stream, name, exchange)
    return coordinator.exclusive_setting()


def bindings_changed(stream: Partition) -> None:
    """The vhost's definitions changed: re-read the partitions of every group of ``stream``
    that has members (the first partition to notice re-balances for all of them)."""
    if not stream.coordinators and partitioning_exchange(stream) is None:
        return  # no partition before or now: every group was assigned alone when it changed
    for group in list(stream.groups.values()):
        if group.members:
            coordinator = stream.coordinators.get(group.name)
            if coordinator is None or coordinator.stale:
                regroup(stream, group, None)
