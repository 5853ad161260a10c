"""Typed runtime settings of the broker, with the built-in defaults.

The YAML shape, environment variables and command-line flags that fill these fields are
defined in :mod:`amqpd.config.schema`; ``config/amqpd.yaml`` documents them. Precedence:
command line > environment (``AMQPD_*``) > configuration file > these defaults.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from amqpd.config.model import PermissionSpec, Topology, UserSpec

#: Values of ``queue_defaults.overflow`` (RabbitMQ's ``x-overflow``).
OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("plain", "json")


@dataclass(slots=True)
class QueueDefaults:
    """Queue arguments that apply when a declare does not give its own (``x-...``).

    Times are milliseconds, as in RabbitMQ's ``x-message-ttl``/``x-expires``; None = unset.
    """

    message_ttl: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    # RabbitMQ's consumer_timeout default: 30 minutes.
    consumer_timeout: int | None = 1_800_000
    delivery_limit: int | None = None
    expires: int | None = None


@functools.cache
def total_memory() -> int:
    """Bytes of RAM available to this process (the cgroup limit when there is one)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 1 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:
            return int(text)
    return physical


@dataclass(slots=True)
class Settings:
    """Everything the broker reads at start-up. Defaults match RabbitMQ's where it has one."""

    # "localhost" listens on 127.0.0.1 and ::1 (one port); "::" on everything, both families.
    host: str = "localhost"
    port: int = 5672
    data_dir: str = "./data"
    log_level: str = "info"
    log_format: str = "plain"
    # connection.tune proposals (RabbitMQ defaults).
    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_connections: int = 0  # 0 = unlimited
    # Hard cap on open channels per connection; 0 = only the negotiated channel_max.
    max_channels_per_connection: int = 0
    max_message_size: int = 128 * 1024 * 1024
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    # RabbitMQ-compat: these users may only connect from a loopback address.
    loopback_users: list[str] = field(default_factory=lambda: ["guest"])
    # Per-connection output buffer: above high the connection's consumers get nothing more
    # until the socket drains below low, and the connection's own reads pause.
    output_high_watermark: int = 1024 * 1024
    output_low_watermark: int = 256 * 1024
    # Seconds a closing connection waits for close-ok before dropping the socket.
    close_timeout: float = 3.0
    # Memory alarm threshold: a float in (0, 1] is a fraction of RAM, an int is bytes.
    memory_high_watermark: float | int = 0.4
    # Disk alarm: free space below this on the data directory's file system blocks
    # publishers. An int is bytes (RabbitMQ's default disk_free_limit is 50000000, "50MB"),
    # a float a multiple of RAM (RabbitMQ's disk_free_limit.relative); 0 = no probe.
    disk_free_limit: float | int = 50_000_000
    # Seconds from accept (after TLS) until connection.open-ok (RabbitMQ: 10 s).
    handshake_timeout: float = 10.0
    # Sockets that have not reached connection.open-ok, from one peer address and in all;
    # past either, a new socket is closed at once (a flood of half-open sockets from one
    # address must not starve other clients). 0 = unlimited.
    max_handshakes_per_address: int = 64
    max_handshakes: int = 1024
    # TLS listener (amqps); tls_port None = no TLS listener; tls_host None = same as host.
    tls_host: str | None = None
    tls_port: int | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_cafile: str | None = None
    tls_verify_peer: bool = False
    tls_fail_if_no_peer_cert: bool = False
    tls_handshake_timeout: float = 10.0
    # Management HTTP API (RabbitMQ's port); None = no listener, host None = same as host.
    management_host: str | None = None
    management_port: int | None = 15672
    # Prometheus metrics (RabbitMQ's rabbitmq_prometheus port); None = no listener.
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int | None = 15692
    queue_defaults: QueueDefaults = field(default_factory=QueueDefaults)
    # Users (password hashes only), extra vhosts and permissions from the configuration.
    users: list[UserSpec] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)
    permissions: list[PermissionSpec] = field(default_factory=list)
    # The topology applied at start-up: ``topology:`` of the config and/or --topology FILE.
    topology_file: str | None = None
    topology: Topology | None = None
    # Where the settings came from (for `amqpd config show` and SIGHUP reload).
    config_file: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    cli_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def memory_high_watermark_bytes(self) -> int:
        """The memory alarm threshold in bytes."""
        value = self.memory_high_watermark
        if isinstance(value, float):
            return int(total_memory() * value)
        return int(value)

    @property
    def disk_free_limit_bytes(self) -> int:
        """The disk alarm threshold in bytes (0 = off)."""
        value = self.disk_free_limit
        if isinstance(value, float):
            return int(total_memory() * value)
        return int(value)

    @property
    def tls_enabled(self) -> bool:
        """True when an amqps listener is configured."""
        return self.tls_port is not None
