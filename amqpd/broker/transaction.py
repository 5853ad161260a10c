"""AMQP transactions (tx class): publishes and acknowledgements held until commit.

RabbitMQ semantics: tx.select makes the channel transactional for good; publishes and
acks/nacks/rejects are buffered and applied, in order, by tx.commit, or dropped by
tx.rollback (the deliveries stay unacked). A channel cannot be in both tx and confirm mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amqpd.broker.message import Message
from amqpd.protocol import codec


@dataclass(slots=True)
class PendingPublish:
    """A publish waiting for commit."""

    fields: codec.PublishFields
    message: Message


@dataclass(slots=True)
class PendingSettle:
    """An ack/nack/reject waiting for commit (tags were checked when it arrived)."""

    delivery_tags: list[int]
    requeue: bool | None  # None = ack


@dataclass(slots=True)
class Transaction:
    """The buffered work of one transaction."""

    actions: list[PendingPublish | PendingSettle] = field(default_factory=list)
    settled_tags: set[int] = field(default_factory=set)

    def clear(self) -> None:
        """Forget everything (after commit or rollback)."""
        self.actions.clear()
        self.settled_tags.clear()
