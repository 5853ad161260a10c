"""The batch of changes the event loop gathers between two commits, and the plan a store applies.

A :class:`Batch` coalesces in memory, so work that cancels out inside one batch never reaches
the disk: an entry put and deleted in the same batch (a message published and acked between
two commits) is forgotten, and a message none of whose entries survive is never written.

Deleting a queue, an exchange or a vhost removes what the batch had pending for it at once
(so a later re-declare in the same batch starts clean) and records a *cascade* that the store
runs first at commit time against what it already holds. That ordering -- cascades, then
records, then messages and entries -- gives the same result as applying every call in turn.

A batch is built by one thread (the event loop). Once handed to ``Store.commit`` it is sealed:
further changes raise RuntimeError, so the loop must start a new batch -- which it can fill
while the commit runs in a worker thread, as batches share nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from amqpd.store.records import BindingRecord, ExchangeRecord, QueueKey, QueueRecord, UserRecord
from amqpd.store.tables import encode_table

CascadeKind = Literal["vhost", "exchange", "queue"]
_K = TypeVar("_K")
_V = TypeVar("_V")

# (vhost, source, destination_kind, destination, routing_key, encoded arguments)
BindingKey = tuple[str, str, str, str, str, bytes]

# What a batch does to one (queue, seq) entry.
_PUT = 0  # insert a row (after deleting the stored one when delete_stored is set)
_UPDATE = 1  # change the delivery count of the stored row
_DELETE = 2  # delete the stored row


class _EntryOp:
    __slots__ = (
        "delete_stored",
        "delivery_count",
        "expires_at",
        "message_id",
        "mode",
        "redelivered",
    )

    def __init__(self, mode: int, message_id: int = 0, expires_at: float | None = None) -> None:
        self.mode = mode
        self.delete_stored = False
        self.message_id = message_id
        self.expires_at = expires_at
        self.delivery_count = 0
        self.redelivered = False


@dataclass(frozen=True, slots=True)
class Cascade:
    """Delete a queue (its entries, bindings to it), an exchange (bindings from and to it) or
    a vhost (everything in it) as the store held it before the batch."""

    kind: CascadeKind
    vhost: str
    name: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    message_id: int
    exchange: str
    routing_key: str
    header_payload: bytes
    body: bytes
    refs: int  # entries of this batch that refer to it


@dataclass(frozen=True, slots=True)
class EntryChanges:
    """One queue's entry changes, applied in this order: deletes, puts, updates."""

    queue: QueueKey
    deletes: tuple[int, ...]  # seqs of stored entries to remove
    puts: tuple[tuple[int, int, int, bool, float | None], ...]
    """(seq, message_id, delivery_count, redelivered, expires_at)"""
    updates: tuple[tuple[int, int, bool], ...]  # (seq, delivery_count, redelivered)


@dataclass(frozen=True, slots=True)
class CommitPlan:
    """A batch reduced to what a store must do, in order:

    1. ``cascades``, in the order they were asked for;
    2. record puts (upserts) and deletes: vhosts, users, exchanges, queues, bindings;
    3. ``messages`` (new, with their reference counts);
    4. ``entries``;
    5. reference counts: ``extra_refs`` adds entries to messages stored earlier, every deleted
       entry removes one, and a message left with none is deleted.
    Arguments travel as encoded tables (``bytes`` next to each record).
    """

    cascades: tuple[Cascade, ...]
    vhosts: tuple[str, ...]
    users_put: tuple[UserRecord, ...]
    users_deleted: tuple[str, ...]
    exchanges: tuple[tuple[ExchangeRecord, bytes], ...]
    queues: tuple[tuple[QueueRecord, bytes], ...]
    bindings_put: tuple[tuple[BindingRecord, bytes], ...]
    bindings_deleted: tuple[BindingKey, ...]
    messages: tuple[NewMessage, ...]
    entries: tuple[EntryChanges, ...]
    extra_refs: dict[int, int]

    @property
    def is_empty(self) -> bool:
        return not (
            self.cascades
            or self.vhosts
            or self.users_put
            or self.users_deleted
            or self.exchanges
            or self.queues
            or self.bindings_put
            or self.bindings_deleted
            or self.messages
            or self.entries
            or self.extra_refs
        )


def binding_key(record: BindingRecord, arguments: bytes) -> BindingKey:
    return (
        record.vhost,
        record.source,
        record.destination_kind,
        record.destination,
        record.routing_key,
        arguments,
    )


class Batch:
    """Operations gathered by the event loop between two commits (see the module docstring)."""

    __slots__ = (
        "_bindings",
        "_cascades",
        "_entries",
        "_exchanges",
        "_messages",
        "_plan",
        "_queues",
        "_users",
        "_vhosts",
    )

    def __init__(self) -> None:
        self._messages: dict[int, tuple[str, str, bytes, bytes]] = {}
        self._entries: dict[QueueKey, dict[int, _EntryOp]] = {}
        self._cascades: list[Cascade] = []
        self._vhosts: dict[str, None] = {}  # an ordered set of vhosts to create
        self._users: dict[str, UserRecord | None] = {}  # None: delete
        self._exchanges: dict[tuple[str, str], tuple[ExchangeRecord, bytes]] = {}
        self._queues: dict[QueueKey, tuple[QueueRecord, bytes]] = {}
        self._bindings: dict[BindingKey, tuple[BindingRecord, bytes] | None] = {}  # None: delete
        self._plan: CommitPlan | None = None

    # -- messages and entries (the hot path) ------------------------------------------------

    def put_message(
        self, message_id: int, exchange: str, routing_key: str, header_payload: bytes, body: bytes
    ) -> None:
        """A new message; it is written only if one of its entries survives the batch."""
        self._check_open()
        self._messages[message_id] = (exchange, routing_key, header_payload, body)

    def put_entry(
        self, queue: QueueKey, seq: int, message_id: int, expires_at: float | None = None
    ) -> None:
        """The message entered ``queue`` at position ``seq``.

        ``seq`` must not be taken by a live entry of the queue, and the message must be put in
        this batch or still be stored (have a live entry); otherwise commit raises StoreError.
        """
        self._check_open()
        ops = self._entries.get(queue)
        if ops is None:
            ops = self._entries[queue] = {}
        op = ops.get(seq)
        if op is None:
            ops[seq] = _EntryOp(_PUT, message_id, expires_at)
            return
        # The stored row (if any) is replaced; a pending update means one is stored.
        op.delete_stored = op.delete_stored or op.mode != _PUT
        op.mode, op.message_id, op.expires_at = _PUT, message_id, expires_at
        op.delivery_count, op.redelivered = 0, False

    def update_entry(
        self, queue: QueueKey, seq: int, delivery_count: int, redelivered: bool
    ) -> None:
        """Persist an entry's delivery count and redelivered flag."""
        self._check_open()
        ops = self._entries.get(queue)
        if ops is None:
            ops = self._entries[queue] = {}
        op = ops.get(seq)
        if op is None:
            op = ops[seq] = _EntryOp(_UPDATE)
        elif op.mode == _DELETE:
            return  # the entry is already gone
        op.delivery_count, op.redelivered = delivery_count, redelivered

    def delete_entry(self, queue: QueueKey, seq: int) -> None:
        """The entry left the queue for good; its message goes with its last entry."""
        self._check_open()
        ops = self._entries.get(queue)
        if ops is None:
            ops = self._entries[queue] = {}
        op = ops.get(seq)
        if op is None:
            ops[seq] = _EntryOp(_DELETE)
        elif op.mode == _PUT and not op.delete_stored:
            del ops[seq]  # put and deleted in this batch: nothing reaches the store
        else:
            op.mode = _DELETE

    # -- topology -----------------------------------------------------------------------------

    def put_vhost(self, name: str) -> None:
        self._check_open()
        self._vhosts[name] = None

    def delete_vhost(self, name: str) -> None:
        """Delete the vhost and everything in it (exchanges, queues, bindings, entries)."""
        self._check_open()
        self._vhosts.pop(name, None)
        _drop_keys(self._exchanges, [key for key in self._exchanges if key[0] == name])
        _drop_keys(self._queues, [key for key in self._queues if key[0] == name])
        _drop_keys(self._entries, [key for key in self._entries if key[0] == name])
        _drop_keys(self._bindings, [key for key in self._bindings if key[0] == name])
        self._cascades.append(Cascade("vhost", name, name))

    def put_user(self, record: UserRecord) -> None:
        self._check_open()
        self._users[record.name] = record

    def delete_user(self, name: str) -> None:
        self._check_open()
        self._users[name] = None

    def put_exchange(self, record: ExchangeRecord) -> None:
        """Create or replace the exchange. Raises TypeError for arguments AMQP cannot carry."""
        self._check_open()
        self._exchanges[(record.vhost, record.name)] = (record, encode_table(record.arguments))

    def delete_exchange(self, vhost: str, name: str) -> None:
        """Delete the exchange and the bindings where it is the source or the destination."""
        self._check_open()
        self._exchanges.pop((vhost, name), None)
        _drop_keys(
            self._bindings,
            [
                key
                for key in self._bindings
                if key[0] == vhost and (key[1] == name or (key[2] == "exchange" and key[3] == name))
            ],
        )
        self._cascades.append(Cascade("exchange", vhost, name))

    def put_queue(self, record: QueueRecord) -> None:
        """Create or replace the queue. Raises TypeError for arguments AMQP cannot carry."""
        self._check_open()
        self._queues[(record.vhost, record.name)] = (record, encode_table(record.arguments))

    def delete_queue(self, vhost: str, name: str) -> None:
        """Delete the queue, its entries (and messages left without entries), bindings to it."""
        self._check_open()
        self._queues.pop((vhost, name), None)
        self._entries.pop((vhost, name), None)
        _drop_keys(
            self._bindings,
            [
                key
                for key in self._bindings
                if key[0] == vhost and key[2] == "queue" and key[3] == name
            ],
        )
        self._cascades.append(Cascade("queue", vhost, name))

    def put_binding(self, record: BindingRecord) -> None:
        """Add a binding (a no-op if the same one exists). Raises TypeError for bad arguments."""
        self._check_open()
        arguments = encode_table(record.arguments)
        self._bindings[binding_key(record, arguments)] = (record, arguments)

    def delete_binding(self, record: BindingRecord) -> None:
        self._check_open()
        arguments = encode_table(record.arguments)
        self._bindings[binding_key(record, arguments)] = None

    # -- size and sealing ---------------------------------------------------------------------

    def __len__(self) -> int:
        """Pending changes after coalescing (each message, entry, record, cascade counts one)."""
        return (
            len(self._messages)
            + sum(map(len, self._entries.values()))
            + len(self._cascades)
            + len(self._vhosts)
            + len(self._users)
            + len(self._exchanges)
            + len(self._queues)
            + len(self._bindings)
        )

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def sealed(self) -> bool:
        return self._plan is not None

    def plan(self) -> CommitPlan:
        """Seal the batch and reduce it to a :class:`CommitPlan` (computed once)."""
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    def _check_open(self) -> None:
        if self._plan is not None:
            raise RuntimeError("this batch was handed to commit(); start a new Batch")

    def _build_plan(self) -> CommitPlan:
        entries, new_refs = _entry_changes(self._entries)
        messages = tuple(
            NewMessage(message_id, *fields, refs=new_refs.pop(message_id))
            for message_id, fields in self._messages.items()
            if message_id in new_refs
        )
        # What is left in new_refs points at messages written by earlier batches.
        return CommitPlan(
            cascades=tuple(self._cascades),
            vhosts=tuple(self._vhosts),
            users_put=tuple(user for user in self._users.values() if user is not None),
            users_deleted=tuple(name for name, user in self._users.items() if user is None),
            exchanges=tuple(self._exchanges.values()),
            queues=tuple(self._queues.values()),
            bindings_put=tuple(value for value in self._bindings.values() if value is not None),
            bindings_deleted=tuple(key for key, value in self._bindings.items() if value is None),
            messages=messages,
            entries=entries,
            extra_refs=new_refs,
        )


def _drop_keys(mapping: dict[_K, _V], keys: list[_K]) -> None:
    for key in keys:
        del mapping[key]


def _entry_changes(
    entries: dict[QueueKey, dict[int, _EntryOp]],
) -> tuple[tuple[EntryChanges, ...], dict[int, int]]:
    """Per-queue entry changes, and how many surviving puts refer to each message id."""
    refs: dict[int, int] = {}
    changes = []
    for queue, ops in entries.items():
        deletes: list[int] = []
        puts: list[tuple[int, int, int, bool, float | None]] = []
        updates: list[tuple[int, int, bool]] = []
        for seq, op in ops.items():
            if op.mode == _PUT:
                if op.delete_stored:
                    deletes.append(seq)
                puts.append((seq, op.message_id, op.delivery_count, op.redelivered, op.expires_at))
                refs[op.message_id] = refs.get(op.message_id, 0) + 1
            elif op.mode == _UPDATE:
                updates.append((seq, op.delivery_count, op.redelivered))
            else:
                deletes.append(seq)
        if deletes or puts or updates:
            changes.append(EntryChanges(queue, tuple(deletes), tuple(puts), tuple(updates)))
    return tuple(changes), refs
