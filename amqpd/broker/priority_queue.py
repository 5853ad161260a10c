"""A priority queue (``x-max-priority``): the FIFO queue with its ready deque replaced by
priority lanes (:class:`amqpd.broker.priority.PriorityReady`).

The vhost picks this class once, at declare time, for a queue with ``x-max-priority`` >= 1;
publishing, dispatch and acks are the FIFO queue's own code, and only the methods that
touch the structure of the ready entries are overridden here, so plain queues pay nothing.

Paging works per lane: each priority level is a FIFO with its own paged tail, exactly like
a whole FIFO queue (``amqpd.broker.paging``), keyed in the scratch file by the lane object.
A lane's spilled entries are newer than its entries in memory, so reading a lane's tail
back in order keeps FIFO within the level, and the head of the queue is always the head of
the highest lane that has anything, in memory or paged -- a high-priority message that was
paged out still overtakes the low-priority ones in memory.

After a restart the stored backlog cannot be read lazily in store order (that is publish
order, not priority order), so a recovered priority queue reads all of it at once into its
lanes, spilling to the scratch file past the paging budget like new messages.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping

from amqpd.broker.consumer import QueueOwner
from amqpd.broker.message import QueueEntry
from amqpd.broker.paging import KEEP_IN_MEMORY, READ_BACK, WRITE_CHUNK, Pager
from amqpd.broker.priority import Lane, PriorityReady
from amqpd.broker.queue import GONE, READY, Queue, QueueHooks
from amqpd.broker.queue_arguments import QueuePolicy


class PriorityQueue(Queue):
    """A queue that delivers higher priorities first, FIFO within a priority."""

    def __init__(
        self,
        name: str,
        vhost_name: str,
        durable: bool = False,
        exclusive_owner: QueueOwner | None = None,
        auto_delete: bool = False,
        arguments: Mapping[str, object] | None = None,
        policy: QueuePolicy | None = None,
        hooks: QueueHooks | None = None,
    ):
        super().__init__(name, vhost_name, durable, exclusive_owner, auto_delete, arguments,
                         policy, hooks)
        self.lanes = PriorityReady(self.policy.max_priority)
        self.ready = self.lanes
        self._buffered = 0  # entries in the lanes' spill buffers, not written yet

    # -- into memory, out to the scratch file ------------------------------------------

    def _to_memory(self, lane: Lane, entry: QueueEntry) -> None:
        lane.entries.append(entry)
        self.lanes.added(1)
        self.ready_bytes += entry.message.size
        if entry.expires_at is not None:
            heapq.heappush(self._expiries, (entry.expires_at, entry.seq, entry))

    def _append(self, entry: QueueEntry) -> None:
        # Only called while nothing is paged, so no lane has a tail to respect.
        self._to_memory(self.lanes.lane_of(entry), entry)
        if self.hooks is not None:
            self.hooks.entry_added(self, entry)

    def _must_spill(self, lane: Lane, pager: Pager | None) -> bool:
        """A new entry of ``lane`` goes to the scratch file when its level already has a paged
        tail (FIFO within the level) or memory is over the paging budget."""
        return pager is not None and (lane.paged > 0 or (
            pager.active and len(self.lanes) - self.tombstones >= KEEP_IN_MEMORY))

    def _spill(self, entry: QueueEntry, pager: Pager | None) -> None:
        # Queue.push calls this whenever anything is paged; unlike a FIFO queue, an entry
        # whose own level has no paged tail may still belong in memory.
        lane = self.lanes.lane_of(entry)
        if self._must_spill(lane, pager):
            assert pager is not None
            if self.hooks is not None:
                self.hooks.entry_added(self, entry)  # persistence sees it like any other
            self._spill_to(lane, entry, pager)
            return
        self._append(entry)
        if self.consumers:
            self.dispatch()
        expires_at = entry.expires_at
        if expires_at is not None and entry.state is READY and expires_at <= time.monotonic():
            self._expire(entry)  # TTL 0: deliver now or never, as Queue.push does

    def _spill_to(self, lane: Lane, entry: QueueEntry, pager: Pager) -> None:
        pager.spilled(entry)
        lane.paged += 1
        self.paged += 1
        self.paged_bytes += entry.message.size
        lane.spill_buffer.append(entry)
        # Counted across lanes, so a queue with many levels buffers no more than a FIFO one.
        self._buffered += 1
        if self._buffered >= WRITE_CHUNK:
            self._buffered = 0
            for some_lane in self.lanes.lanes():
                if some_lane.spill_buffer:
                    pager.file.write(some_lane, some_lane.spill_buffer)
                    some_lane.spill_buffer = []

    def _page_in_lane(self, lane: Lane) -> None:
        """Bring the oldest paged entries of a lane back: the file first, then the buffer."""
        pager = self.pager
        assert pager is not None
        if lane.paged > len(lane.spill_buffer):
            entries = pager.file.read(lane, READ_BACK)
        else:
            entries, lane.spill_buffer = lane.spill_buffer, []
            self._buffered -= len(entries)
        if not entries:  # fewer than counted (cannot happen short of a damaged file)
            self.paged -= lane.paged
            lane.paged = 0
            return
        for entry in entries:
            lane.paged -= 1
            self.paged -= 1
            self.paged_bytes -= entry.message.size
            pager.loaded(entry)
            self._to_memory(lane, entry)

    # -- out of the queue --------------------------------------------------------------

    def _pop_ready(self) -> QueueEntry | None:
        lanes = self.lanes
        while True:
            lane = lanes.head()
            if lane is None:
                return None
            entries = lane.entries
            if lane.paged and len(entries) < READ_BACK // 2:
                self._page_in_lane(lane)
            if not entries:
                lanes.retire(lane)
                continue
            entry = entries.popleft()
            lanes.added(-1)
            if not entries and not lane.paged:
                lanes.retire(lane)
            if entry.state is GONE:
                self.tombstones -= 1
                continue
            self.ready_bytes -= entry.message.size
            return entry

    def _page_in(self) -> None:
        raise AssertionError("a priority queue pages in per lane")  # pragma: no cover

    # -- back into the queue -----------------------------------------------------------

    def _reinsert(self, returned: list[QueueEntry]) -> None:
        """Each returned entry goes back into its own lane at its original position. A lane's
        paged tail is newer than anything that was delivered from it, so memory is right."""
        lanes = self.lanes
        by_lane: dict[Lane, list[QueueEntry]] = {}
        for entry in returned:
            by_lane.setdefault(lanes.lane_of(entry), []).append(entry)
        for lane, entries in by_lane.items():
            entries.sort(key=_by_seq)
            ready = lane.entries
            if not ready or entries[-1].seq < ready[0].seq:
                ready.extendleft(reversed(entries))
            else:
                lane.entries = deque(sorted(itertools.chain(ready, entries), key=_by_seq))
            lanes.added(len(entries))

    def _compact(self) -> None:
        lanes = self.lanes
        for lane in lanes.lanes():
            live = deque(entry for entry in lane.entries if entry.state is not GONE)
            lanes.added(len(live) - len(lane.entries))
            lane.entries = live
            if not live and not lane.paged:
                lanes.retire(lane)
        self.tombstones = 0

    # -- restart and deletion ----------------------------------------------------------

    def attach_stored_tail(
        self, count: int, last_seq: int, reader: Callable[[int, int], list[QueueEntry]]
    ) -> None:
        """Recovery: read the whole stored backlog into the lanes now (see the module doc);
        past the paging budget entries go on to the scratch file."""
        self.continue_after(last_seq)
        pager = self.pager
        after = -1
        while True:
            entries = reader(after, READ_BACK)
            if not entries:
                return
            after = entries[-1].seq
            for entry in entries:
                lane = self.lanes.lane_of(entry)
                if pager is not None:
                    pager.restored(entry)  # counted into memory, and out again if spilled
                    if self._must_spill(lane, pager):
                        self._spill_to(lane, entry, pager)
                        continue
                self._to_memory(lane, entry)

    def on_deleted(self) -> None:
        pager = self.pager
        for lane in self.lanes.lanes():
            if lane.paged and pager is not None:
                pager.drop(lane, lane.paged)
            lane.spill_buffer = []
        self.paged = self.paged_bytes = self._buffered = 0
        super().on_deleted()


def _by_seq(entry: QueueEntry) -> int:
    return entry.seq


def queue_class(policy: QueuePolicy) -> type[Queue]:
    """The class for a new queue: chosen once, at declare time."""
    return PriorityQueue if policy.max_priority else Queue


__all__ = ["PriorityQueue", "queue_class"]
