"""The broker: settings, users, virtual hosts and the alarms.

The broker knows nothing of connections: whoever must hear of an alarm (each client
connection, the I/O shell) registers a callback with :meth:`Broker.add_alarm_listener`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from amqpd.access.auth import User, UserStore, hash_password
from amqpd.broker.journal import Journal
from amqpd.broker.paging import Pager
from amqpd.broker.vhost import VirtualHost
from amqpd.config.settings import Settings

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
        self.journal = Journal()
        limit = getattr(self.settings, "memory_high_watermark_bytes", None)
        self.memory_limit: int = limit or int(total_memory() * DEFAULT_MEMORY_FRACTION)
        self.memory_alarm = False
        self.pager = Pager(self.journal, self.memory_limit // 2)
        # Called with True when an alarm is raised and False when it clears; a dict keeps
        # registration order and removes in O(1) with thousands of connections.
        self._alarm_listeners: dict[Callable[[bool], None], None] = {}
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
            for listener in list(self._alarm_listeners):
                listener(alarm)
        return alarm

    def tick(self, now: float) -> None:
        """Timers of the core: message TTLs, unused queues, the memory alarm."""
        for vhost in list(self.vhosts.values()):
            vhost.tick(now)
        self.check_memory()

    def add_alarm_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(raised)`` whenever an alarm is raised or cleared."""
        self._alarm_listeners[listener] = None

    def remove_alarm_listener(self, listener: Callable[[bool], None]) -> None:
        """Stop calling ``listener`` (unknown listeners are ignored)."""
        self._alarm_listeners.pop(listener, None)
