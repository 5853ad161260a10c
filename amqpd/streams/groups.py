"""Consumer groups of a stream: a shared read position and a durable committed offset.

Theory of operation:
- A group reads the stream once for all its members: one :class:`~amqpd.streams.log.Cursor`,
  and each message goes to one member (the stream's dispatch picks members round-robin by
  credit).
- ``outstanding`` holds the offsets delivered and not yet settled; ``redeliver`` the ones a
  member gave back (nack with requeue, a closed channel), which go out again before the
  cursor moves on. The committed offset is therefore the lowest offset still owed to the
  group, or the cursor when nothing is: everything below it was acked (or filtered out),
  so a crash never skips a message -- it can only deliver again what was not yet committed.
- The commit is computed when the stream syncs (once per group commit of the broker), not
  per ack, and written to ``groups.log`` in the stream's directory: one JSON line
  ``[name, offset]`` per change, the last line per name wins (``[name, null]``: the group
  was deleted), compacted when opened. A torn last line after a crash is ignored (that
  commit was not yet durable).
- Operators move or delete a group that has no consumers (:meth:`StreamQueue.reset_group`,
  the management API, ``amqpd ctl reset_stream_group_offset``): as Kafka's
  ``--reset-offsets``, never under running consumers, which would not notice.
- Who may receive: a *member* is a channel (``QueueConsumer.member``): the unit that
  receives in order, holds the unacked deliveries and gives them back when it closes (a
  process that wants several members opens several channels); ``owed`` counts each
  member's deliveries not yet settled. A shared group delivers to every member; a
  *restricted* group only to ``owner``'s consumers -- the first member of an exclusive group
  (``x-single-active-consumer``), or the member a partitioned group assigned this stream to
  (:mod:`amqpd.streams.partitions`). While another member still owes deliveries of the
  group, the owner waits (``handing_over``): the old owner's messages are settled or given
  back (then redelivered first) before anything newer goes out, so order is never broken.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from amqpd.streams.arguments import ConsumeSpec
from amqpd.streams.log import Cursor, SegmentLog

if TYPE_CHECKING:
    from amqpd.broker.consumer import ConsumerMember, QueueConsumer

LOGGER = logging.getLogger(__name__)
GROUPS_FILE = "groups.log"


class GroupInUseError(Exception):
    """An operator asked to move or delete a group that still has consumers."""


class Group:
    """One consumer group of one stream."""

    __slots__ = ("active", "cursor", "dirty", "exclusive", "members", "name", "outstanding",
                 "owed", "owner", "redeliver", "restricted", "spec", "stored")

    def __init__(self, name: str, cursor: Cursor, stored: int | None):
        self.name = name
        self.cursor = cursor
        self.stored = stored  # the committed offset last written to the file
        self.members: list[QueueConsumer] = []  # the group's consumers, in join order
        self.outstanding: set[int] = set()
        self.redeliver: list[int] = []  # a heap
        self.spec: ConsumeSpec | None = None  # the filters of the member that started it
        # The committed offset may have moved since the last sync (the stream keeps a list
        # of such groups: StreamQueue._commit_due).
        self.dirty = False
        # x-single-active-consumer, set by the first member to join an empty group.
        self.exclusive = False
        # Restricted: only ``owner``'s consumers receive (None: nobody, e.g. a partition
        # that no member is assigned). Not restricted: every member shares.
        self.restricted = False
        self.owner: ConsumerMember | None = None
        self.active: list[QueueConsumer] = self.members  # who the dispatch feeds
        self.owed: dict[ConsumerMember, int] = {}  # member -> deliveries not yet settled (> 0)

    @property
    def handing_over(self) -> bool:
        """Another member than the owner still owes deliveries: the owner must wait."""
        owed = self.owed
        return self.restricted and bool(owed) and (len(owed) > 1 or self.owner not in owed)

    def assign(self, restricted: bool, owner: ConsumerMember | None) -> bool:
        """Who may receive now; True when that changed."""
        changed = restricted != self.restricted or owner is not self.owner
        self.restricted = restricted
        self.owner = owner
        self.members_changed()
        return changed

    def assign_alone(self) -> bool:
        """A group that is no partition: exclusive -- the first member in join order
        receives, the others wait; otherwise all members share."""
        if self.exclusive:
            return self.assign(True, self.members[0].member if self.members else None)
        return self.assign(False, None)

    def members_changed(self) -> None:
        """Recompute the consumers the dispatch feeds (after a join, a leave, an assign)."""
        if not self.restricted:
            self.active = self.members
        else:
            owner = self.owner
            self.active = [c for c in self.members if c.member is owner]

    def _repaid(self, member: ConsumerMember) -> None:
        count = self.owed.get(member, 0) - 1
        if count > 0:
            self.owed[member] = count
        else:
            self.owed.pop(member, None)

    @property
    def committed(self) -> int:
        """The offset after the highest contiguously settled message."""
        low = self.cursor.offset
        if self.outstanding:
            low = min(low, min(self.outstanding))
        if self.redeliver:
            low = min(low, self.redeliver[0])
        return low

    def settled(self, offset: int, member: ConsumerMember) -> None:
        """An offset was acked (or rejected): it no longer holds the commit back."""
        self.outstanding.discard(offset)
        owed = self.owed  # _repaid, inlined: this runs once per ack
        count = owed.get(member, 0) - 1
        if count > 0:
            owed[member] = count
        else:
            owed.pop(member, None)

    def returned(self, offset: int, member: ConsumerMember) -> None:
        """An offset came back unsettled: deliver it again to some member."""
        self._repaid(member)
        if offset in self.outstanding:
            self.outstanding.discard(offset)
            heapq.heappush(self.redeliver, offset)

    def take_redelivery(self, log: SegmentLog) -> int | None:
        """The next returned offset still in the log, or None."""
        while self.redeliver:
            offset = heapq.heappop(self.redeliver)
            if offset >= log.first_offset:
                return offset
        return None


class GroupStore:
    """The committed offsets of a stream's groups, in ``groups.log``."""

    def __init__(self, directory: Path):
        self.path = directory / GROUPS_FILE
        self.offsets: dict[str, int] = {}
        lines = 0
        try:
            with self.path.open("rb") as file:
                for line in file:
                    lines += 1
                    try:
                        name, offset = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # a torn last line: that commit never became durable
                    if isinstance(name, str) and isinstance(offset, int):
                        self.offsets[name] = offset
                    elif isinstance(name, str) and offset is None:  # deleted
                        self.offsets.pop(name, None)
        except FileNotFoundError:
            pass
        if lines > len(self.offsets):
            self._compact()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.dirty = False

    def _compact(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(b"".join(self._line(name, offset) for name, offset in self.offsets.items()))
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.path)

    @staticmethod
    def _line(name: str, offset: int) -> bytes:
        return json.dumps([name, offset]).encode("utf-8") + b"\n"

    def write(self, commits: dict[str, int]) -> None:
        """Append changed commits (they survive a kill -9 from here, a power cut after
        the next fsync)."""
        if not commits:
            return
        self.offsets.update(commits)
        os.write(self.fd, b"".join(self._line(name, offset) for name, offset in commits.items()))
        self.dirty = True

    def forget(self, name: str) -> None:
        """Delete a group's commit (a ``null`` line, dropped at the next compaction)."""
        self.offsets.pop(name, None)
        os.write(self.fd, json.dumps([name, None]).encode("utf-8") + b"\n")
        self.dirty = True

    def sync(self) -> None:
        """fsync now: an operator's change is durable when the API answers (it is rare,
        and the file is small)."""
        os.fsync(self.fd)
        self.dirty = False

    def sync_handle(self) -> int | None:
        """A duplicated descriptor to fsync when something was written, else None."""
        if not self.dirty:
            return None
        self.dirty = False
        return os.dup(self.fd)

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
