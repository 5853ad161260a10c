"""The broker: settings, users, virtual hosts and the set of open connections."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from amqpd.auth import User, UserStore, hash_password
from amqpd.journal import Journal
from amqpd.paging import Pager
from amqpd.settings import Settings
from amqpd.vhost import VirtualHost

if TYPE_CHECKING:
    from amqpd.connection import Connection

LOGGER = logging.getLogger(__name__)

# RabbitMQ's default vm_memory_high_watermark: 40% of the machine's memory.
DEFAULT_MEMORY_FRACTION = 0.4


def total_memory() -> int:
    """Physical memory of the machine in bytes."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * 1024**3


class Broker:
    """Shared state of one broker process (no I/O here)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.cluster_name = "amqpd@localhost"
        self.users = UserStore()
        self.vhosts: dict[str, VirtualHost] = {}
        self.connections: set[Connection] = set()
        self.journal = Journal()
        limit = getattr(self.settings, "memory_high_watermark_bytes", None)
        self.memory_limit: int = limit or int(total_memory() * DEFAULT_MEMORY_FRACTION)
        self.memory_alarm = False
        self.pager = Pager(self.journal, self.memory_limit // 2)
        self.alarm_listeners: list[Callable[[bool], None]] = []
        self.add_vhost(self.settings.default_vhost)
        default_user = self.settings.default_user
        if default_user:
            self.users.add(
                User(
                    default_user,
                    hash_password(self.settings.default_pass),
                    tags=["administrator"],
                    vhosts={self.settings.default_vhost},
                    loopback_only=default_user in self.settings.loopback_users,
                )
            )

    def use_journal(self, journal: Journal) -> None:
        """Switch to another journal (the persistent one, before any client connects)."""
        journal.queued_bytes = self.journal.queued_bytes
        self.journal = journal
        self.pager.journal = journal
        for vhost in self.vhosts.values():
            vhost.journal = journal

    def add_vhost(self, name: str) -> VirtualHost:
        """Create a virtual host (idempotent)."""
        vhost = self.vhosts.get(name)
        if vhost is None:
            defaults = getattr(self.settings, "queue_defaults", None)
            vhost = self.vhosts[name] = VirtualHost(name, self.journal, defaults, self.pager)
        return vhost

    def check_memory(self) -> bool:
        """Raise or clear the memory alarm from the queued bytes; returns the alarm state.

        Queued message bytes, not the process RSS, drive the alarm: CPython rarely hands
        freed memory back, so an RSS-based alarm would stay raised after queues drain.
        """
        alarm = self.journal.queued_bytes > self.memory_limit
        if alarm != self.memory_alarm:
            self.memory_alarm = alarm
            LOGGER.warning(
                "memory alarm %s: %d bytes queued, high watermark %d",
                "raised" if alarm else "cleared", self.journal.queued_bytes, self.memory_limit,
            )
            for connection in list(self.connections):
                connection.set_blocked(alarm)
            for listener in self.alarm_listeners:
                listener(alarm)
        return alarm

    def tick(self, now: float) -> None:
        """Timers of the core: message TTLs, unused queues, the memory alarm."""
        for vhost in list(self.vhosts.values()):
            vhost.tick(now)
        self.check_memory()

    def connection_opened(self, connection: Connection) -> None:
        """Track an open connection (for shutdown and limits)."""
        self.connections.add(connection)

    def connection_closed(self, connection: Connection) -> None:
        """Forget a connection."""
        self.connections.discard(connection)
