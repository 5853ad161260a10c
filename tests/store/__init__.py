"""Store tests, and what they share: a naive model of the store and exact comparison helpers.

The :class:`Model` applies every batch operation the moment it is called, with no coalescing
and no reference counting -- it is the specification the stores are checked against.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from amqpd.store import (
    Batch,
    BindingRecord,
    ExchangeRecord,
    QueueKey,
    QueueRecord,
    Snapshot,
    StoredEntry,
    StoredMessage,
    UserRecord,
)
from amqpd.store.tables import encode_table

_keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.decimals(places=3, min_value=-(10**6), max_value=10**6).filter(
        lambda d: not (d == 0 and d.is_signed())  # AMQP has no negative zero
    ),
    _keys,
    st.binary(max_size=20),
    st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC)),
    st.none(),
)
amqp_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
amqp_tables = st.dictionaries(_keys, amqp_values, max_size=6)
"""Argument tables with every AMQP type (values as pamqp decodes them, or equal to them)."""


def typed(value: object) -> object:
    """A comparable form that keeps AMQP types apart (True vs 1, 1 vs 1.0, str vs bytes)."""
    if isinstance(value, Mapping):
        return ("table", tuple(sorted((key, typed(item)) for key, item in value.items())))
    if isinstance(value, list | tuple):
        return ("array", tuple(typed(item) for item in value))
    if isinstance(value, bytes | bytearray):
        return ("bytes", bytes(value))  # pamqp gives bytearray; either is a byte array
    if isinstance(value, datetime.datetime):
        return ("timestamp", value.tzinfo is not None, value.timestamp())
    if isinstance(value, Decimal):
        return ("decimal", value.as_tuple())
    return (type(value).__name__, value)


def canonical(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as plain data, argument tables compared by AMQP type."""

    def record(item: object) -> object:
        fields = dataclasses.asdict(item)  # type: ignore[call-overload]
        if "arguments" in fields:
            fields["arguments"] = typed(fields["arguments"])
        return (type(item).__name__, tuple(sorted(fields.items())))

    return {
        "vhosts": snapshot.vhosts,
        "exchanges": [record(x) for x in snapshot.exchanges],
        "queues": [record(x) for x in snapshot.queues],
        "bindings": [record(x) for x in snapshot.bindings],
        "users": [record(x) for x in snapshot.users],
        "entries": {queue: list(rows) for queue, rows in sorted(snapshot.entries.items())},
        "messages": dict(sorted(snapshot.messages.items())),
        "next_message_id": snapshot.next_message_id,
    }


@dataclasses.dataclass
class _ModelEntry:
    message_id: int
    delivery_count: int
    redelivered: bool
    expires_at: float | None


class Model:
    """The store's meaning, one call at a time; ``batch`` forwards every call to a real Batch."""

    def __init__(self) -> None:
        self.vhosts: set[str] = set()
        self.users: dict[str, UserRecord] = {}
        self.exchanges: dict[tuple[str, str], ExchangeRecord] = {}
        self.queues: dict[QueueKey, QueueRecord] = {}
        self.bindings: dict[tuple[str, str, str, str, str, bytes], BindingRecord] = {}
        self.entries: dict[QueueKey, dict[int, _ModelEntry]] = {}
        self.bodies: dict[int, tuple[str, str, bytes, bytes]] = {}  # every message ever put

    # Each method mirrors Batch; ``apply(batch, name, *args)`` calls both.
    def apply(self, batch: Batch, name: str, *args: Any) -> None:
        getattr(batch, name)(*args)
        getattr(self, name)(*args)

    def put_message(self, mid: int, exchange: str, key: str, header: bytes, body: bytes) -> None:
        self.bodies[mid] = (exchange, key, header, body)

    def put_entry(self, queue: QueueKey, seq: int, mid: int, expires: float | None = None) -> None:
        self.entries.setdefault(queue, {})[seq] = _ModelEntry(mid, 0, False, expires)

    def update_entry(self, queue: QueueKey, seq: int, count: int, redelivered: bool) -> None:
        entry = self.entries.get(queue, {}).get(seq)
        if entry is not None:
            entry.delivery_count, entry.redelivered = count, redelivered

    def delete_entry(self, queue: QueueKey, seq: int) -> None:
        self.entries.get(queue, {}).pop(seq, None)

    def put_vhost(self, name: str) -> None:
        self.vhosts.add(name)

    def delete_vhost(self, name: str) -> None:
        self.vhosts.discard(name)
        for mapping in (self.exchanges, self.queues, self.entries):
            for key in [key for key in mapping if key[0] == name]:
                del mapping[key]
        self.bindings = {k: b for k, b in self.bindings.items() if b.vhost != name}

    def put_user(self, record: UserRecord) -> None:
        self.users[record.name] = record

    def delete_user(self, name: str) -> None:
        self.users.pop(name, None)

    def put_exchange(self, record: ExchangeRecord) -> None:
        self.exchanges[(record.vhost, record.name)] = record

    def delete_exchange(self, vhost: str, name: str) -> None:
        self.exchanges.pop((vhost, name), None)
        self.bindings = {
            k: b
            for k, b in self.bindings.items()
            if not (
                b.vhost == vhost
                and (
                    b.source == name or (b.destination_kind == "exchange" and b.destination == name)
                )
            )
        }

    def put_queue(self, record: QueueRecord) -> None:
        self.queues[(record.vhost, record.name)] = record

    def delete_queue(self, vhost: str, name: str) -> None:
        self.queues.pop((vhost, name), None)
        self.entries.pop((vhost, name), None)
        self.bindings = {
            k: b
            for k, b in self.bindings.items()
            if not (b.vhost == vhost and b.destination_kind == "queue" and b.destination == name)
        }

    def put_binding(self, record: BindingRecord) -> None:
        self.bindings.setdefault(_binding_key(record), record)

    def delete_binding(self, record: BindingRecord) -> None:
        self.bindings.pop(_binding_key(record), None)

    # -- reading ------------------------------------------------------------------------------

    def referenced(self) -> set[int]:
        return {e.message_id for rows in self.entries.values() for e in rows.values()}

    def snapshot(self, with_bodies: bool = True) -> Snapshot:
        referenced = self.referenced()
        messages = {}
        for mid in referenced:
            exchange, key, header, body = self.bodies[mid]
            messages[mid] = StoredMessage(mid, exchange, key, header, body if with_bodies else None)
        return Snapshot(
            vhosts=sorted(self.vhosts),
            exchanges=[self.exchanges[k] for k in sorted(self.exchanges)],
            queues=[self.queues[k] for k in sorted(self.queues)],
            bindings=[self.bindings[k] for k in sorted(self.bindings)],
            users=[self.users[k] for k in sorted(self.users)],
            entries={
                queue: [
                    StoredEntry(seq, e.message_id, e.delivery_count, e.redelivered, e.expires_at)
                    for seq, e in sorted(rows.items())
                ]
                for queue, rows in self.entries.items()
                if rows
            },
            messages=messages,
            next_message_id=max(referenced, default=0) + 1,
        )


def _binding_key(record: BindingRecord) -> tuple[str, str, str, str, str, bytes]:
    return (
        record.vhost,
        record.source,
        record.destination_kind,
        record.destination,
        record.routing_key,
        encode_table(record.arguments),
    )
