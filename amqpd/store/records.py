"""The records the store keeps, what ``load()`` returns, and the store's errors (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

QueueKey = tuple[str, str]
"""(vhost, queue name)."""


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    vhost: str
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class QueueRecord:
    vhost: str
    name: str
    durable: bool
    auto_delete: bool
    arguments: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """A binding; its identity is every field, arguments included (as in RabbitMQ)."""

    vhost: str
    source: str
    destination_kind: str  # "queue" | "exchange"
    destination: str
    routing_key: str
    arguments: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    password_hash: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    message_id: int
    exchange: str
    routing_key: str
    header_payload: bytes
    body: bytes | None  # None when loaded without bodies (paging)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    seq: int
    message_id: int
    delivery_count: int
    redelivered: bool
    expires_at: float | None  # wall-clock epoch seconds


@dataclass
class Snapshot:
    """Everything the store holds, as ``load()`` returns it at start-up.

    Lists are sorted (vhost, then name; bindings by every field) so two stores holding the
    same data return equal snapshots.
    """

    vhosts: list[str] = field(default_factory=list)
    exchanges: list[ExchangeRecord] = field(default_factory=list)
    queues: list[QueueRecord] = field(default_factory=list)
    bindings: list[BindingRecord] = field(default_factory=list)
    users: list[UserRecord] = field(default_factory=list)
    entries: dict[QueueKey, list[StoredEntry]] = field(default_factory=dict)
    """Per queue that has entries, in seq order."""
    messages: dict[int, StoredMessage] = field(default_factory=dict)
    """Every message some entry refers to."""
    next_message_id: int = 1
    """Highest stored message id + 1 (1 when no message is stored)."""


class StoreError(Exception):
    """The store could not do what was asked; the message says what and where."""


class StoreCorruptError(StoreError):
    """The store file is damaged or is not an amqpd store; it was left untouched."""


class StoreVersionError(StoreError):
    """The store file was written by a newer amqpd whose schema this one does not know."""


class StoreLockedError(StoreError):
    """Another process has the store file open."""


class StoreFullError(StoreError):
    """The file system is full (SQLITE_FULL, ENOSPC). Nothing of the batch was applied and
    nothing is lost: the same batch may be committed again once there is space."""


class StoreIOError(StoreError):
    """A write or fsync failed (EIO and the like). What reached the disk is unknown: a retried
    fsync may report success for pages the kernel already dropped, so the batch must be
    treated as lost, never as committed."""
