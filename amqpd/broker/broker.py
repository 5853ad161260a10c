"""The broker: settings, users, virtual hosts and the alarms.

The broker knows nothing of connections: whoever must hear of an alarm (each client
connection, the I/O shell) registers a callback with :meth:`Broker.add_alarm_listener`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from amqpd.access.auth import User, UserStore, hash_password
from amqpd.broker.journal import Journal
from amqpd.broker.message import CLOCK
from amqpd.broker.paging import Pager
from amqpd.broker.policies import PolicyError, make_policy
from amqpd.broker.stats import BrokerCounters
from amqpd.broker.vhost import QueueFactory, VirtualHost
from amqpd.config.settings import Settings
from amqpd.store.policy_file import write_policies

LOGGER = logging.getLogger(__name__)

# RabbitMQ's default vm_memory_high_watermark: 40% of the machine's memory.
DEFAULT_MEMORY_FRACTION = 0.4

# The resource alarms; while any is raised, publishing connections are not read from.
MEMORY = "memory"
DISK = "disk"
AlarmListener = Callable[[frozenset[str]], None]


def disk_free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path``
    (blocking: a system call on that file system)."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def blocked_reason(alarms: Collection[str]) -> str:
    """connection.blocked's reason, worded as RabbitMQ's: ``low on memory & disk``."""
    names = [name for name in (MEMORY, DISK) if name in alarms]
    names += sorted(name for name in alarms if name not in (MEMORY, DISK))
    return "low on " + " & ".join(names)


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
        # The raised resource alarms (MEMORY, DISK); read by the shell, the connections and
        # the management API. Memory and disk are independent: publishers are unblocked
        # only when the set is empty.
        self.alarms: frozenset[str] = frozenset()
        # The disk alarm: the probe is injectable so tests can simulate a full disk.
        self.disk_free_limit: int = getattr(self.settings, "disk_free_limit_bytes", 0)
        self.free_bytes: Callable[[Path], int] = disk_free_bytes
        self.disk_free: int | None = None  # the last probe's reading
        self._disk_low = False  # the probe is below the limit
        self._disk_full = False  # the store hit ENOSPC and has not committed since
        self._probe_failed = False
        # Set when the store failed to write (EIO): persistent messages are refused.
        self.store_failure: str | None = None
        # Event counters for the management API's rates (amqpd.admin samples them).
        self.stats = BrokerCounters()
        self.pager = Pager(self.journal, self.memory_limit // 2)
        # Called with the set of raised alarms whenever it changes; a dict keeps
        # registration order and removes in O(1) with thousands of connections.
        self._alarm_listeners: dict[AlarmListener, None] = {}
        # Queue types registered from above the broker by x-queue-type (amqpd.streams
        # installs "stream"); one dict shared by every vhost.
        self.queue_types: dict[str, QueueFactory] = {}
        # Where policies are kept across restarts (set by the shell once the store is open;
        # None: in memory only).
        self.policy_file: Path | None = None
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
            vhost.queue_types = self.queue_types
            vhost.policies.on_change = self.save_policies
        return vhost

    def save_policies(self) -> None:
        """Write every vhost's policies to :attr:`policy_file`, before the change is
        answered (one small fsync'd file write per policy change, which operators make
        rarely; see amqpd.store.policy_file)."""
        if self.policy_file is None:
            return
        documents = [policy.document(name) for name in sorted(self.vhosts)
                     for policy in self.vhosts[name].policies]
        try:
            write_policies(self.policy_file, documents)
        except OSError as exc:
            LOGGER.error("cannot write the policies to %s: %s; the change holds until "
                         "the broker stops", self.policy_file, exc)

    def restore_policies(self, documents: list[dict[str, object]]) -> None:
        """Put back the policies read from the policies file (their vhosts are created:
        a policy outlives a restart, so its vhost must too)."""
        for document in documents:
            vhost = self.add_vhost(str(document.get("vhost", "/")))
            try:
                policy = make_policy(str(document.get("name", "")), document.get("pattern"),
                                     document.get("definition"),
                                     document.get("apply-to", "all"),
                                     document.get("priority", 0))
            except PolicyError as exc:
                LOGGER.error("stored policy %r skipped: %s", document.get("name"), exc)
                continue
            on_change, vhost.policies.on_change = vhost.policies.on_change, None
            vhost.policies.put(policy)
            vhost.policies.on_change = on_change

    def check_memory(self) -> bool:
        """Raise or clear the memory alarm from the queued bytes; returns the alarm state.

        Queued message bytes, not the process RSS, drive the alarm: CPython rarely hands
        freed memory back, so an RSS-based alarm would stay raised after queues drain.
        """
        alarm = self.journal.queued_bytes > self.memory_limit
        if alarm != (MEMORY in self.alarms):
            LOGGER.warning(
                "memory alarm %s: %d bytes queued, high watermark %d",
                "raised" if alarm else "cleared", self.journal.queued_bytes, self.memory_limit,
            )
            self._set_alarm(MEMORY, alarm)
        return alarm

    @property
    def memory_alarm(self) -> bool:
        """True while the memory alarm is raised."""
        return MEMORY in self.alarms

    @property
    def disk_alarm(self) -> bool:
        """True while the disk alarm is raised (free space low, or the store hit ENOSPC)."""
        return DISK in self.alarms

    def disk_paths(self) -> list[Path]:
        """The directories whose file systems the disk alarm watches: the data directory and
        the paging file's (the same one unless configured apart)."""
        paths = [Path(self.settings.data_dir)]
        paging = self.pager.path
        if paging is not None and paging.parent not in paths:
            paths.append(paging.parent)
        return paths

    def probe_disk(self) -> int | None:
        """The lowest free space among :meth:`disk_paths` (None when the limit is off or no
        path can be read). Blocking: the shell calls it from a worker thread."""
        if self.disk_free_limit <= 0:
            return None
        readings = []
        for path in self.disk_paths():
            try:
                readings.append(self.free_bytes(path))
            except OSError as exc:
                if not self._probe_failed:
                    LOGGER.warning("cannot read the free space of %s: %s", path, exc)
                self._probe_failed = True
        return min(readings) if readings else None

    def check_disk(self, free: int | None) -> bool:
        """Raise or clear the disk alarm from a :meth:`probe_disk` reading; returns the state.

        Hysteresis: raised below the limit, cleared only above the limit plus a tenth of it
        (at least 1 MiB), so a disk hovering at the limit does not flap publishers.
        """
        limit = self.disk_free_limit
        if free is not None:
            self.disk_free = free
            # Once low, the reading must clear the hysteresis margin too.
            margin = max(limit // 10, 1 << 20) if self._disk_low else 0
            low = free < limit + margin
            if low != self._disk_low:
                self._disk_low = low
                LOGGER.warning("free disk space %s: %d bytes free, limit %d",
                               "low" if low else "sufficient again", free, limit)
        elif limit <= 0:
            self._disk_low = False
        return self._update_disk_alarm()

    def store_full(self, full: bool) -> None:
        """The store could not commit for lack of space (True), or committed again (False).
        ENOSPC raises the disk alarm at once, whatever the last probe said."""
        if full != self._disk_full:
            self._disk_full = full
            self._update_disk_alarm()

    def _update_disk_alarm(self) -> bool:
        alarm = self._disk_low or self._disk_full
        if alarm != (DISK in self.alarms):
            LOGGER.warning("disk alarm %s%s", "raised" if alarm else "cleared",
                           ": publishers are blocked" if alarm else "")
            self._set_alarm(DISK, alarm)
        return alarm

    def fail_store(self, reason: str) -> None:
        """A write or fsync of the store failed: from now on persistent messages for durable
        queues are refused, until the broker is restarted."""
        if self.store_failure is None:
            self.store_failure = reason
            LOGGER.error("the store failed (%s): persistent messages are refused until the "
                         "broker is restarted", reason)

    def health(self) -> list[str]:
        """What is wrong, one line each (empty when healthy): raised alarms, a failed store,
        a paging file that cannot be written or read."""
        problems = []
        if MEMORY in self.alarms:
            problems.append(f"memory alarm: {self.journal.queued_bytes} bytes queued, "
                            f"high watermark {self.memory_limit}")
        if DISK in self.alarms:
            free = "unknown" if self.disk_free is None else str(self.disk_free)
            cause = "the store hit a full disk" if self._disk_full else \
                f"{free} bytes free, limit {self.disk_free_limit}"
            problems.append(f"disk alarm: {cause}")
        if self.store_failure is not None:
            problems.append(f"store failed, persistent messages refused: {self.store_failure}")
        problems.extend(self.pager.problems())
        return problems

    def _set_alarm(self, name: str, raised: bool) -> None:
        alarms = self.alarms | {name} if raised else self.alarms - {name}
        if alarms == self.alarms:
            return
        self.alarms = alarms
        for listener in list(self._alarm_listeners):
            listener(alarms)

    def tick(self, now: float) -> None:
        """Timers of the core: message TTLs, unused queues, the memory alarm."""
        CLOCK.now = now  # queue entries are stamped with this (see CoarseClock)
        for vhost in list(self.vhosts.values()):
            vhost.tick(now)
        self.check_memory()

    def add_alarm_listener(self, listener: AlarmListener) -> None:
        """Call ``listener(alarms)`` with the raised alarms whenever an alarm is raised or
        cleared (an empty set: none is raised any more)."""
        self._alarm_listeners[listener] = None

    def remove_alarm_listener(self, listener: AlarmListener) -> None:
        """Stop calling ``listener`` (unknown listeners are ignored)."""
        self._alarm_listeners.pop(listener, None)
