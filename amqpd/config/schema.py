"""Every setting of the broker: YAML path, type and range, ``AMQPD_*`` variable, flag.

One table (:data:`OPTIONS`) drives validation of the file, the environment and the command
line, ``amqpd config show`` and the documentation in ``config/amqpd.yaml``.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yaml.nodes import Node, ScalarNode

from amqpd.config.nodes import (
    FLOAT,
    INT,
    STR,
    ConfigError,
    Origin,
    boolean,
    construct,
    describe,
    is_null,
    lead,
    string,
    string_list,
)
from amqpd.config.settings import LOG_FORMATS, LOG_LEVELS, OVERFLOW_MODES

MIB = 1024 * 1024


class Kind(ABC):
    """A value type: converts a node (with its position) into a Python value."""

    expected = "a value"
    #: Environment/flag text is used verbatim as a string (not parsed as YAML).
    text_is_string = False
    nullable = False

    @abstractmethod
    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        """The Python value of a non-null node."""

    def parse(self, node: Node, origin: Origin, path: str) -> Any:
        """Null check, then :meth:`convert`."""
        if is_null(node):
            if self.nullable:
                return None
            raise self.wrong(node, origin, path)
        return self.convert(node, origin, path)

    def wrong(self, node: Node, origin: Origin, path: str, got: str | None = None) -> ConfigError:
        return origin.error(
            node, f"{lead(path)}got {got or describe(node)}, expected {self.expected}"
        )

    def show(self, value: Any) -> Any:
        """The value as ``config show`` prints it."""
        return value


def _or_null(text: str, nullable: bool) -> str:
    return f"{text} or null" if nullable else text


class Int(Kind):
    def __init__(self, minimum: int = 0, maximum: int | None = None, nullable: bool = False):
        self.minimum, self.maximum, self.nullable = minimum, maximum, nullable
        if maximum is None:
            text = f"an integer >= {minimum}"
        else:
            text = f"an integer from {minimum} to {maximum}"
        self.expected = _or_null(text, nullable)

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if not isinstance(node, ScalarNode) or node.tag != INT:
            raise self.wrong(node, origin, path)
        value = int(construct(node))
        self.check_range(value, node, origin, path)
        return value

    def check_range(self, value: int, node: Node, origin: Origin, path: str) -> None:
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise self.wrong(node, origin, path, f"{value}, which is out of range")


class Float(Kind):
    def __init__(self, minimum: float, maximum: float):
        self.minimum, self.maximum = minimum, maximum
        self.expected = f"a number from {minimum:g} to {maximum:g}"

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if not isinstance(node, ScalarNode) or node.tag not in (INT, FLOAT):
            raise self.wrong(node, origin, path)
        value = float(construct(node))
        if not (self.minimum <= value <= self.maximum) or math.isnan(value):
            raise self.wrong(node, origin, path, f"{node.value}, which is out of range")
        return value


class Str(Kind):
    text_is_string = True

    def __init__(self, nonempty: bool = True, nullable: bool = False, what: str = "a string"):
        self.nonempty, self.nullable = nonempty, nullable
        self.expected = _or_null("a non-empty string" if nonempty else what, nullable)

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        value = string(node, origin, path)
        if self.nonempty and not value:
            raise self.wrong(node, origin, path, "an empty string")
        return value


class Secret(Str):
    def show(self, value: Any) -> Any:
        return "***" if value else value


class Bool(Kind):
    expected = "true or false"

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        return boolean(node, origin, path)


class Choice(Kind):
    text_is_string = True

    def __init__(self, values: tuple[str, ...]):
        self.values = values
        self.expected = "one of " + ", ".join(values)

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if not isinstance(node, ScalarNode) or node.tag != STR or node.value not in self.values:
            raise self.wrong(node, origin, path)
        return node.value


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "ki": 1024, "kib": 1024,
    "m": MIB, "mi": MIB, "mib": MIB,
    "g": 1024**3, "gi": 1024**3, "gib": 1024**3,
    "t": 1024**4, "ti": 1024**4, "tib": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}


def parse_size(text: str) -> int | None:
    """``'128MiB'`` -> bytes (k/M/G/T and KiB/MiB/GiB/TiB binary; kB/MB/GB/TB decimal)."""
    match = _SIZE.match(text)
    if match is None:
        return None
    factor = _SIZE_UNITS.get(match.group(2).lower())
    if factor is None:
        return None
    return int(float(match.group(1)) * factor)


def format_size(value: int) -> str | int:
    """Bytes as the largest exact binary unit (``134217728`` -> ``'128MiB'``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return value


class Size(Int):
    """Bytes: an integer or a size like ``'128MiB'``."""

    def __init__(self, minimum: int = 0, maximum: int | None = None, nullable: bool = False):
        super().__init__(minimum, maximum, nullable)
        limit = f" up to {format_size(maximum)}" if maximum is not None else ""
        low = f" of at least {format_size(minimum)}" if minimum > 1 else ""
        self.expected = _or_null(
            f"a size{low}{limit}: bytes (an integer) or a string like '128MiB' or '2GB'",
            nullable,
        )

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if isinstance(node, ScalarNode) and node.tag == INT:
            value = int(construct(node))
        elif isinstance(node, ScalarNode) and node.tag == STR:
            parsed = parse_size(node.value)
            if parsed is None:
                raise self.wrong(node, origin, path)
            value = parsed
        else:
            raise self.wrong(node, origin, path)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            shown = f"{node.value!r} ({value} bytes)" if node.tag == STR else str(value)
            raise self.wrong(node, origin, path, f"{shown}, which is out of range")
        return value

    def show(self, value: Any) -> Any:
        return format_size(value) if isinstance(value, int) else value


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*\Z")
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class Duration(Int):
    """Milliseconds: an integer, or a string like ``'30s'``, ``'5m'``, ``'1h'``."""

    def __init__(self, minimum: int = 0, nullable: bool = True):
        super().__init__(minimum, None, nullable)
        self.expected = _or_null(
            f"milliseconds (an integer >= {minimum}) or a duration like '500ms', '30s', "
            "'5m', '1h', '1d'",
            nullable,
        )

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if isinstance(node, ScalarNode) and node.tag == INT:
            value = int(construct(node))
        elif isinstance(node, ScalarNode) and node.tag == STR:
            match = _DURATION.match(node.value)
            if match is None:
                raise self.wrong(node, origin, path)
            value = int(float(match.group(1)) * _DURATION_UNITS[match.group(2)])
        else:
            raise self.wrong(node, origin, path)
        self.check_range(value, node, origin, path)
        return value


class RelativeOrSize(Kind):
    """A limit given either relative to RAM (a number with a decimal point) or as a size.

    RabbitMQ's vm_memory_high_watermark (a fraction of RAM up to 1, or at least 1 MiB) and
    disk_free_limit (a multiple of RAM up to 100 -- its ``.relative`` -- or any size, 0 =
    off) are both of this shape, with their own ranges.
    """

    def __init__(self, expected: str, max_relative: float, min_size: int):
        self.expected = expected
        self.max_relative = max_relative
        self.min_size = min_size

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        if not isinstance(node, ScalarNode):
            raise self.wrong(node, origin, path)
        if node.tag == FLOAT:
            value = float(construct(node))
            if not 0 < value <= self.max_relative:
                raise self.wrong(node, origin, path, f"{node.value}, which is out of range")
            return value
        size: int | None = None
        if node.tag == INT:
            size = int(construct(node))
        elif node.tag == STR:
            size = parse_size(node.value)
        if size is None:
            raise self.wrong(node, origin, path)
        if size < self.min_size:
            raise self.wrong(node, origin, path, f"{node.value}, which is out of range")
        return size

    def show(self, value: Any) -> Any:
        return format_size(value) if isinstance(value, int) else value


#: RabbitMQ's vm_memory_high_watermark: a fraction of RAM or an absolute size.
WATERMARK = RelativeOrSize(
    "a fraction of RAM as a number above 0 and at most 1 (like 0.4), or an absolute "
    "size of at least 1MiB (like '2GiB')",
    max_relative=1.0, min_size=MIB,
)
#: RabbitMQ's disk_free_limit: an absolute size, or a multiple of RAM (``.relative``).
DISK_LIMIT = RelativeOrSize(
    "a size (bytes, or a string like '50MB' or '1GiB'; 0 = off), or a multiple of RAM "
    "as a number with a decimal point above 0 and at most 100 (like 1.0 or 1.5)",
    max_relative=100.0, min_size=0,
)


class StrList(Kind):
    """A list of strings; from the environment also ``a,b,c``."""

    expected = "a list of strings"

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        return string_list(node, origin, path)

    def from_text(self, text: str) -> list[str] | None:
        """Comma-separated text (None when the text is YAML flow syntax)."""
        if text.lstrip().startswith("["):
            return None
        return [part.strip() for part in text.split(",") if part.strip()]


class Structured(Kind):
    """A structure parsed by a function (users, permissions, topology)."""

    def __init__(self, expected: str, parse: Callable[[Node, Origin, str], Any],
                 show: Callable[[Any], Any] | None = None, nullable: bool = False):
        self.expected = expected
        self._parse = parse
        self._show = show
        self.nullable = nullable

    def convert(self, node: Node, origin: Origin, path: str) -> Any:
        return self._parse(node, origin, path)

    def show(self, value: Any) -> Any:
        return self._show(value) if self._show is not None else value


@dataclass(frozen=True, slots=True)
class Option:
    """One setting."""

    path: str  # dotted YAML path
    attr: str  # Settings attribute, dotted for nested dataclasses
    kind: Kind
    env: str
    flag: str | None = None
    help: str = ""

    @property
    def secret(self) -> bool:
        return isinstance(self.kind, Secret) or self.path == "users"


def _users(node: Node, origin: Origin, path: str) -> Any:
    from amqpd.config.parse import parse_users

    return list(parse_users(node, origin, path).values())


def _permissions(node: Node, origin: Origin, path: str) -> Any:
    from amqpd.config.parse import parse_permissions

    return parse_permissions(node, origin, path)


def _topology(node: Node, origin: Origin, path: str) -> Any:
    from amqpd.config.parse import parse_topology

    return parse_topology(node, origin, path)


def _show_users(users: Any) -> Any:
    return [{"name": u.name, "password_hash": "***", "tags": list(u.tags)} for u in users]


def _show_permissions(permissions: Any) -> Any:
    return [
        {"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write,
         "read": p.read}
        for p in permissions
    ]


def _show_topology(topology: Any) -> Any:
    if topology is None:
        return None
    from amqpd.config.document import topology_document

    document = topology_document(topology)
    for user in document.get("users", []):
        user["password_hash"] = "***"
    return document


PORT = Int(0, 65535)

OPTIONS: tuple[Option, ...] = (
    Option("listeners.amqp.host", "host", Str(), "AMQPD_HOST", "--host",
           "address to listen on"),
    Option("listeners.amqp.port", "port", PORT, "AMQPD_PORT", "--port",
           "AMQP port; 0 picks a free one"),
    Option("listeners.tls.host", "tls_host", Str(nullable=True), "AMQPD_TLS_HOST", None,
           "address of the amqps listener; null = listeners.amqp.host"),
    Option("listeners.tls.port", "tls_port", Int(0, 65535, nullable=True), "AMQPD_TLS_PORT",
           "--tls-port", "amqps port (5671 by convention); null = no TLS listener"),
    Option("listeners.tls.certfile", "tls_certfile", Str(nullable=True), "AMQPD_TLS_CERTFILE",
           "--tls-certfile", "server certificate chain (PEM)"),
    Option("listeners.tls.keyfile", "tls_keyfile", Str(nullable=True), "AMQPD_TLS_KEYFILE",
           "--tls-keyfile", "server private key (PEM)"),
    Option("listeners.tls.cafile", "tls_cafile", Str(nullable=True), "AMQPD_TLS_CAFILE",
           "--tls-cafile", "CA certificates that sign client certificates (PEM)"),
    Option("listeners.tls.verify_peer", "tls_verify_peer", Bool(), "AMQPD_TLS_VERIFY_PEER",
           None, "ask clients for a certificate and verify it (enables SASL EXTERNAL)"),
    Option("listeners.tls.fail_if_no_peer_cert", "tls_fail_if_no_peer_cert", Bool(),
           "AMQPD_TLS_FAIL_IF_NO_PEER_CERT", None,
           "refuse clients without a certificate (needs verify_peer)"),
    Option("listeners.tls.handshake_timeout", "tls_handshake_timeout", Float(0.1, 300),
           "AMQPD_TLS_HANDSHAKE_TIMEOUT", None, "seconds for the TLS handshake"),
    Option("listeners.management.host", "management_host", Str(nullable=True),
           "AMQPD_MANAGEMENT_HOST", None,
           "address of the management HTTP API; null = listeners.amqp.host"),
    Option("listeners.management.port", "management_port", Int(0, 65535, nullable=True),
           "AMQPD_MANAGEMENT_PORT", "--management-port",
           "management HTTP API port (RabbitMQ's 15672); 0 picks a free one; null = off"),
    Option("listeners.prometheus.host", "prometheus_host", Str(), "AMQPD_PROMETHEUS_HOST", None,
           "address of the Prometheus metrics listener (no authentication: keep it private)"),
    Option("listeners.prometheus.port", "prometheus_port", Int(0, 65535, nullable=True),
           "AMQPD_PROMETHEUS_PORT", "--prometheus-port",
           "Prometheus metrics port (RabbitMQ's 15692); 0 picks a free one; null = off"),
    Option("listeners.handshake_timeout", "handshake_timeout", Float(0.1, 3600),
           "AMQPD_HANDSHAKE_TIMEOUT", None,
           "seconds from accept (after TLS) to connection.open-ok before the socket is closed"),
    Option("listeners.max_handshakes_per_address", "max_handshakes_per_address", Int(0),
           "AMQPD_MAX_HANDSHAKES_PER_ADDRESS", None,
           "sockets from one address before connection.open-ok; more are closed at once; "
           "0 = unlimited"),
    Option("listeners.max_handshakes", "max_handshakes", Int(0), "AMQPD_MAX_HANDSHAKES", None,
           "sockets from all addresses before connection.open-ok; 0 = unlimited"),
    Option("data_dir", "data_dir", Str(), "AMQPD_DATA_DIR", "--data-dir",
           "directory of the persistent store"),
    Option("limits.frame_max", "frame_max", Int(4096, 2**31 - 1), "AMQPD_FRAME_MAX", None,
           "largest frame in bytes, proposed in connection.tune"),
    Option("limits.channel_max", "channel_max", Int(1, 65535), "AMQPD_CHANNEL_MAX", None,
           "channels per connection, proposed in connection.tune"),
    Option("limits.heartbeat", "heartbeat", Int(0, 65535), "AMQPD_HEARTBEAT", None,
           "seconds, proposed in connection.tune; 0 = off"),
    Option("limits.max_connections", "max_connections", Int(0), "AMQPD_MAX_CONNECTIONS",
           None, "0 = unlimited"),
    Option("limits.max_channels_per_connection", "max_channels_per_connection",
           Int(0, 65535), "AMQPD_MAX_CHANNELS_PER_CONNECTION", None,
           "hard cap on open channels of one connection; 0 = channel_max only"),
    Option("limits.max_message_size", "max_message_size", Size(1, 512 * MIB),
           "AMQPD_MAX_MESSAGE_SIZE", None, "largest message body"),
    Option("limits.memory_high_watermark", "memory_high_watermark", WATERMARK,
           "AMQPD_MEMORY_HIGH_WATERMARK", None,
           "memory alarm: fraction of RAM (0.4) or absolute size ('2GiB')"),
    Option("limits.disk_free_limit", "disk_free_limit", DISK_LIMIT,
           "AMQPD_DISK_FREE_LIMIT", None,
           "disk alarm: free space on the data dir's file system ('50MB'), or a multiple "
           "of RAM (1.0); 0 = off"),
    Option("limits.output_high_watermark", "output_high_watermark", Size(1),
           "AMQPD_OUTPUT_HIGH_WATERMARK", None,
           "per-connection output buffer above which its consumers pause"),
    Option("limits.output_low_watermark", "output_low_watermark", Size(0),
           "AMQPD_OUTPUT_LOW_WATERMARK", None, "... and below which they resume"),
    Option("limits.close_timeout", "close_timeout", Float(0, 3600), "AMQPD_CLOSE_TIMEOUT",
           None, "seconds a closing connection waits for close-ok"),
    Option("queue_defaults.message_ttl", "queue_defaults.message_ttl", Duration(0),
           "AMQPD_QUEUE_MESSAGE_TTL", None, "x-message-ttl when a queue has none"),
    Option("queue_defaults.max_length", "queue_defaults.max_length", Int(0, nullable=True),
           "AMQPD_QUEUE_MAX_LENGTH", None, "x-max-length (messages)"),
    Option("queue_defaults.max_length_bytes", "queue_defaults.max_length_bytes",
           Size(0, nullable=True), "AMQPD_QUEUE_MAX_LENGTH_BYTES", None,
           "x-max-length-bytes"),
    Option("queue_defaults.overflow", "queue_defaults.overflow", Choice(OVERFLOW_MODES),
           "AMQPD_QUEUE_OVERFLOW", None, "x-overflow"),
    Option("queue_defaults.consumer_timeout", "queue_defaults.consumer_timeout", Duration(1),
           "AMQPD_QUEUE_CONSUMER_TIMEOUT", None,
           "unacked delivery older than this closes its channel (RabbitMQ: 30m)"),
    Option("queue_defaults.delivery_limit", "queue_defaults.delivery_limit",
           Int(0, nullable=True), "AMQPD_QUEUE_DELIVERY_LIMIT", None, "x-delivery-limit"),
    Option("queue_defaults.expires", "queue_defaults.expires", Duration(1),
           "AMQPD_QUEUE_EXPIRES", None, "x-expires: delete a queue unused this long"),
    Option("logging.level", "log_level", Choice(LOG_LEVELS), "AMQPD_LOG_LEVEL", "--log-level",
           "log verbosity"),
    Option("logging.format", "log_format", Choice(LOG_FORMATS), "AMQPD_LOG_FORMAT",
           "--log-format", "plain text or one JSON object per line"),
    Option("auth.default_user", "default_user", Str(nonempty=False), "AMQPD_DEFAULT_USER",
           None, "user created at start with all permissions on default_vhost; '' = none"),
    Option("auth.default_pass", "default_pass", Secret(nonempty=False), "AMQPD_DEFAULT_PASS",
           None, "its password (the only plain password amqpd reads)"),
    Option("auth.default_vhost", "default_vhost", Str(), "AMQPD_DEFAULT_VHOST", None,
           "vhost created at start"),
    Option("auth.loopback_users", "loopback_users", StrList(), "AMQPD_LOOPBACK_USERS", None,
           "users that may only connect from localhost"),
    Option("users", "users",
           Structured("a list of users, each {name, password_hash, tags}", _users,
                      _show_users),
           "AMQPD_USERS", None, "users with password hashes (amqpd hash-password)"),
    Option("vhosts", "vhosts", StrList(), "AMQPD_VHOSTS", None, "extra vhosts to create"),
    Option("permissions", "permissions",
           Structured("a list of permissions, each {user, vhost, configure, write, read}",
                      _permissions, _show_permissions),
           "AMQPD_PERMISSIONS", None, "regular expressions, as RabbitMQ"),
    Option("topology_file", "topology_file", Str(nullable=True), "AMQPD_TOPOLOGY_FILE",
           "--topology", "a topology file applied at start and on SIGHUP"),
    Option("topology", "topology",
           Structured("a topology mapping (vhosts, users, permissions)", _topology,
                      _show_topology, nullable=True),
           "AMQPD_TOPOLOGY", None, "an inline topology"),
)

BY_PATH = {option.path: option for option in OPTIONS}
BY_ATTR = {option.attr: option for option in OPTIONS}
BY_FLAG = {option.flag: option for option in OPTIONS if option.flag}


def tree() -> dict[str, Any]:
    """The YAML shape: nested dicts whose leaves are :class:`Option`."""
    root: dict[str, Any] = {}
    for option in OPTIONS:
        *groups, leaf = option.path.split(".")
        node = root
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = option
    return root


def find(name: str) -> Option | None:
    """An option by YAML path (``limits.frame_max``) or attribute (``frame_max``)."""
    return BY_PATH.get(name) or BY_ATTR.get(name) or BY_ATTR.get(name.replace("-", "_"))
