"""The confirm and tx classes of a channel: confirm.select, tx.select/commit/rollback.

A mixin of :class:`amqpd.session.channel.Channel`, kept apart because these handlers only
switch the channel's mode and replay buffered work through the channel's own publish and
settle paths; the delivery and acknowledgement state stays in ``channel.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pamqp import commands

from amqpd.broker.transaction import PendingPublish, Transaction
from amqpd.protocol.errors import ChannelError

if TYPE_CHECKING:
    from amqpd.session.connection import Connection


class TransactionMethods:
    """confirm.* and tx.* handlers (``on_<class>_<method>``)."""

    connection: Connection
    id: int
    confirm_mode: bool
    transaction: Transaction | None
    unacked: dict[int, Any]

    def _route(self, fields: Any, message: Any) -> bool:
        raise NotImplementedError  # the channel's publish path

    def _settle(self, deliveries: list[Any], requeue: bool | None) -> None:
        raise NotImplementedError  # the channel's acknowledgement path

    # -- confirm class -----------------------------------------------------------------

    def on_confirm_select(self, method: commands.Confirm.Select) -> None:
        """confirm.select: from now on every publish is acked or nacked."""
        if self.transaction is not None:
            raise ChannelError(406, "cannot switch from tx to confirm mode")
        self.confirm_mode = True
        if not method.nowait:
            self.connection.write_method(self.id, commands.Confirm.SelectOk())

    # -- tx class ----------------------------------------------------------------------

    def on_tx_select(self, method: commands.Tx.Select) -> None:
        """tx.select: the channel becomes transactional."""
        if self.confirm_mode:
            raise ChannelError(406, "cannot switch from confirm to tx mode")
        if self.transaction is None:
            self.transaction = Transaction()
        self.connection.write_method(self.id, commands.Tx.SelectOk())

    def _require_transaction(self) -> Transaction:
        if self.transaction is None:
            raise ChannelError(406, "channel is not transactional")
        return self.transaction

    def on_tx_commit(self, method: commands.Tx.Commit) -> None:
        """tx.commit: apply the buffered publishes and acknowledgements, in order."""
        transaction = self._require_transaction()
        actions = list(transaction.actions)
        transaction.clear()
        for action in actions:
            if isinstance(action, PendingPublish):
                self._route(action.fields, action.message)
            else:
                deliveries = [self.unacked.pop(tag) for tag in action.delivery_tags
                              if tag in self.unacked]
                self._settle(deliveries, action.requeue)
        # commit-ok promises the work is done, so it waits for the disk like a confirm.
        self.connection.broker.journal.after_commit(self._commit_ok)

    def _commit_ok(self) -> None:
        if self.connection.channels.get(self.id) is self:
            if self.connection.broker.journal.lost_from:  # its batch never reached the disk
                error = ChannelError(541, "tx.commit failed: the broker's store failed", 90, 20)
                self.connection._close_channel(self, error)
            else:
                self.connection.write_method(self.id, commands.Tx.CommitOk())

    def on_tx_rollback(self, method: commands.Tx.Rollback) -> None:
        """tx.rollback: drop the buffered work; deliveries stay unacked."""
        self._require_transaction().clear()
        self.connection.write_method(self.id, commands.Tx.RollbackOk())
