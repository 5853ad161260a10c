"""The ``amqpd`` command line: run the broker, plus small operator commands.

::

    amqpd [OPTIONS] [run]                 run the broker (the default)
    amqpd [OPTIONS] check-config [FILE]   validate the configuration (and topology); exit 0/1
    amqpd [OPTIONS] config show           effective settings and where each comes from
    amqpd [OPTIONS] ping [--host ...]     AMQP handshake against the local listener; exit 0/1
    amqpd [OPTIONS] export-topology [-o FILE]
    amqpd import-definitions FILE.json [-o FILE]
    amqpd hash-password [PASSWORD]
    amqpd ctl [--url URL] [-u USER -p PASS] COMMAND ...   rabbitmqctl's commands over HTTP

Precedence of settings: command line (flags, ``--set PATH=VALUE``) > environment
(``AMQPD_*``) > configuration file > built-in default.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from amqpd.access.auth import hash_password
from amqpd.config.nodes import ConfigError
from amqpd.config.settings import LOG_FORMATS, LOG_LEVELS, Settings
from amqpd.protocol.framing import FrameReader

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker

LOG_LEVEL_CHOICES = LOG_LEVELS
#: Global flags that set a setting: flag -> argparse dest.
SETTING_FLAGS = {
    "--host": "host",
    "--port": "port",
    "--data-dir": "data_dir",
    "--log-level": "log_level",
    "--log-format": "log_format",
    "--tls-port": "tls_port",
    "--tls-certfile": "tls_certfile",
    "--tls-keyfile": "tls_keyfile",
    "--tls-cafile": "tls_cafile",
    "--management-port": "management_port",
    "--prometheus-port": "prometheus_port",
    "--topology": "topology",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amqpd",
        description="An AMQP 0-9-1 message broker that RabbitMQ clients use.",
        epilog="Precedence: command line > environment (AMQPD_*) > --config file > defaults. "
               "See config/amqpd.yaml for every setting.",
    )
    parser.add_argument("--host", help="address to listen on (default localhost: 127.0.0.1 "
                        "and ::1; :: is every address)")
    parser.add_argument("--port", help="port to listen on; 0 picks a free one")
    parser.add_argument("--config", help="broker configuration file (YAML); default "
                        "$AMQPD_CONFIG or config/amqpd.yaml when present")
    parser.add_argument("--data-dir", help="directory for the persistent store")
    parser.add_argument("--log-level", choices=LOG_LEVEL_CHOICES, help="log verbosity")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="plain or json lines")
    parser.add_argument("--tls-port", help="port of the amqps listener")
    parser.add_argument("--tls-certfile", help="server certificate (PEM)")
    parser.add_argument("--tls-keyfile", help="server private key (PEM)")
    parser.add_argument("--tls-cafile", help="CA certificates for client certificates")
    parser.add_argument("--topology", help="topology file applied at start and on SIGHUP")
    parser.add_argument("--management-port",
                        help="port of the management HTTP API (15672); 0 picks a free one")
    parser.add_argument("--prometheus-port",
                        help="port of the Prometheus metrics (15692); 0 picks a free one")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="any setting, e.g. --set limits.frame_max=65536 (repeatable)")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the broker (the default)")
    hasher = commands.add_parser("hash-password", help="print a password hash for the config")
    hasher.add_argument("password", nargs="?", help="the password (prompted when omitted)")
    check = commands.add_parser("check-config", help="validate the configuration; exit 0/1")
    check.add_argument("file", nargs="?", help="configuration file (default: as for run)")
    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_commands.add_parser("show", help="effective settings, secrets masked")
    ping = commands.add_parser("ping", help="AMQP handshake against the listener; exit 0/1")
    ping.add_argument("--host", dest="ping_host", help="default: the configured host")
    ping.add_argument("--port", dest="ping_port", type=int, help="default: the configured port")
    ping.add_argument("--user", help="default: the configured default user")
    ping.add_argument("--password", help="default: the configured default password")
    ping.add_argument("--vhost", help="default: the configured default vhost")
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    ping.add_argument("--fail-on-alarm", action="store_true",
                      help="exit 1 also when the broker reports an alarm or a failed store")
    export = commands.add_parser("export-topology", help="write the topology as YAML")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    importer = commands.add_parser(
        "import-definitions", help="convert a RabbitMQ definitions export to YAML"
    )
    importer.add_argument("definitions", help="definitions JSON file")
    importer.add_argument("-o", "--output", help="file to write (default: standard output)")
    return parser


def cli_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The settings given on the command line, keyed by how they were given."""
    overrides: dict[str, str] = {}
    for flag, dest in SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[flag] = str(value)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"command line --set {item}: no '=', expected --set PATH=VALUE")
        overrides[f"--set {name.strip()}"] = value
    return overrides


def load(args: argparse.Namespace, config: str | None = None) -> Settings:
    """Settings for these arguments (defaults < file < environment < command line)."""
    from amqpd.config.loader import load_settings

    return load_settings(config or args.config, cli=cli_overrides(args))


def _fail(message: str) -> int:
    print(message, file=sys.stderr)  # noqa: T201
    return 1


def _output(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _broker(settings: Settings) -> Broker:
    """A broker with the configuration applied (raises ConfigError on conflicts)."""
    from amqpd.broker.broker import Broker
    from amqpd.topology.apply import configure_broker

    broker = Broker(settings)
    configure_broker(broker, settings)
    return broker


def check_config(args: argparse.Namespace) -> int:
    """Validate settings, TLS files and the topology (planned on an empty broker)."""
    try:
        settings = load(args, args.file)
        if settings.tls_enabled:
            from amqpd.access.tls import TLSConfigError, server_context

            try:
                server_context(settings)
            except TLSConfigError as exc:
                raise ConfigError(f"{settings.sources.get('listeners.tls.port')}: {exc}") \
                    from exc
        _broker(settings)
    except ConfigError as exc:
        return _fail(str(exc))
    print(f"{settings.config_file or 'built-in defaults'}: configuration OK")  # noqa: T201
    return 0


def export_topology(args: argparse.Namespace) -> int:
    """Export the topology of a broker with this configuration and data directory: what the
    store holds (durable exchanges, queues and bindings clients declared) plus what the
    configuration declares. A running broker locks its store; then only the configured part
    can be exported (said on stderr)."""
    from amqpd.broker.broker import Broker
    from amqpd.store import FILENAME, StoreError
    from amqpd.topology.apply import configure_broker
    from amqpd.topology.export import export_topology as export

    try:
        settings = load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    broker = Broker(settings)
    store = None
    if (Path(settings.data_dir) / FILENAME).is_file():
        from amqpd.server import open_and_recover

        try:
            store = open_and_recover(broker)
        except StoreError as exc:
            from amqpd.server import LIVE_TOPOLOGY_FILENAME

            live = Path(settings.data_dir) / LIVE_TOPOLOGY_FILENAME
            if live.is_file():
                # A running broker holds the store and keeps this file current (1 s).
                _output(live.read_text(encoding="utf-8"), args.output)
                return 0
            _fail(f"amqpd export-topology: {exc}; exporting the configured topology only")
            broker = Broker(settings)
    try:
        configure_broker(broker, settings)
        _output(export(broker), args.output)
    except ConfigError as exc:
        return _fail(str(exc))
    finally:
        if store is not None:
            store.close()
    return 0


def import_definitions(args: argparse.Namespace) -> int:
    """RabbitMQ definitions JSON -> amqpd topology YAML; what is not converted -> stderr."""
    from amqpd.config.definitions import DefinitionsError, convert_file
    from amqpd.topology.export import dump

    try:
        conversion = convert_file(args.definitions)
    except DefinitionsError as exc:
        return _fail(str(exc))
    for note in conversion.notes:
        print(f"not converted: {note}", file=sys.stderr)  # noqa: T201
    header = f"# converted by `amqpd import-definitions` from {args.definitions}\n"
    _output(dump(conversion.topology, header), args.output)
    return 0


class PingError(Exception):
    """The broker did not complete the handshake."""


def _read_method(sock: socket.socket, reader: FrameReader) -> object:
    """The next method frame, through the broker's own framing checks (heartbeats skipped)."""
    from amqpd.protocol import codec
    from amqpd.protocol.constants import FRAME_METHOD
    from amqpd.protocol.errors import AMQPError

    while True:
        try:
            for frame_type, _, payload in reader.frames():
                if frame_type == FRAME_METHOD:
                    return codec.decode_method(bytes(payload))  # method payloads are bytes: no copy
        except AMQPError as exc:
            raise PingError(f"the broker sent bad framing: {exc.detail}") from exc
        data = sock.recv(65536)
        if not data:
            raise PingError("the broker closed the connection")
        if not reader.buffered and data.startswith(b"AMQP"):
            raise PingError(f"the broker refused the protocol version: {data[:8]!r}")
        reader.feed(data)


def ping(
    host: str, port: int, user: str, password: str, vhost: str, timeout: float
) -> tuple[str, str | None]:
    """connection.start/start-ok/tune/tune-ok/open/close; returns the server product and
    amqpd's health report from the server properties (None from other brokers).

    Raises:
        PingError: with the broker's reply or the socket error.
        OSError: when the connection cannot be made.
    """
    from pamqp import commands
    from pamqp import frame as pframe

    def expect(value: object, wanted: type) -> object:
        if isinstance(value, commands.Connection.Close):
            raise PingError(f"{value.reply_code} {value.reply_text}")
        if not isinstance(value, wanted):
            raise PingError(f"expected {wanted.__name__}, got {type(value).__name__}")
        return value

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        reader = FrameReader(1 << 20)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        start = expect(_read_method(sock, reader), commands.Connection.Start)
        assert isinstance(start, commands.Connection.Start)
        properties = start.server_properties or {}
        sock.sendall(pframe.marshal(commands.Connection.StartOk(
            client_properties={"product": "amqpd ping",
                               "capabilities": {"authentication_failure_close": True}},
            mechanism="PLAIN", response=f"\0{user}\0{password}", locale="en_US",
        ), 0))
        tune = expect(_read_method(sock, reader), commands.Connection.Tune)
        assert isinstance(tune, commands.Connection.Tune)
        sock.sendall(pframe.marshal(commands.Connection.TuneOk(
            channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0), 0))
        sock.sendall(pframe.marshal(commands.Connection.Open(virtual_host=vhost), 0))
        expect(_read_method(sock, reader), commands.Connection.OpenOk)
        sock.sendall(pframe.marshal(commands.Connection.Close(
            reply_code=200, reply_text="ping", class_id=0, method_id=0), 0))
        expect(_read_method(sock, reader), commands.Connection.CloseOk)
    product = properties.get("product", b"?")
    version = properties.get("version", b"?")
    health = properties.get("health")
    return (
        " ".join(v.decode() if isinstance(v, bytes) else str(v) for v in (product, version)),
        health.decode() if isinstance(health, bytes) else None if health is None else str(health),
    )


def ping_command(args: argparse.Namespace) -> int:
    """``amqpd ping``: exit 0 when the broker answers the whole handshake."""
    try:
        settings = load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    # A wildcard is not an address to connect to; localhost always has its IPv4 socket.
    host = args.ping_host or {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1",
                              "localhost": "127.0.0.1"}.get(
        settings.host, settings.host
    )
    port = args.ping_port if args.ping_port is not None else settings.port
    user = args.user if args.user is not None else settings.default_user
    password = args.password if args.password is not None else settings.default_pass
    vhost = args.vhost if args.vhost is not None else settings.default_vhost
    started = time.monotonic()
    try:
        product, health = ping(host, port, user, password, vhost, args.timeout)
    except (OSError, PingError) as exc:
        return _fail(f"amqpd ping: {host}:{port}: {exc}")
    elapsed = (time.monotonic() - started) * 1000
    report = "" if health is None else f"; health: {health}"
    print(f"{host}:{port}: {product} is up ({elapsed:.0f} ms){report}")  # noqa: T201
    # Alarms do not fail the ping by default: a blocked broker is alive, and a container
    # restarted for a full disk comes back to the same full disk.
    return 1 if args.fail_on_alarm and health not in (None, "ok") else 0


def run(args: argparse.Namespace) -> int:
    """Start the broker and serve until SIGTERM/SIGINT."""
    from amqpd.config.logs import configure_logging

    try:
        settings = load(args)
    except ConfigError as exc:
        return _fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    if settings.tls_enabled:
        from amqpd.access.tls import TLSConfigError, server_context

        try:
            server_context(settings)
        except TLSConfigError as exc:
            return _fail(f"{settings.sources.get('listeners.tls.port')}: {exc}")
    os.makedirs(settings.data_dir, exist_ok=True)
    from amqpd.broker.broker import Broker
    from amqpd.server import run as serve
    from amqpd.topology.apply import configure_broker

    # Until the server's signal receiver is installed, a SIGHUP must not kill the broker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Users, vhosts and topology are applied after the store is recovered, so conflicts
    # with stored state are found (and named) before anything is declared.
    return serve(Broker(settings), configure=configure_broker)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amqpd`` console script and ``python -m amqpd``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["ctl"]:
        # rabbitmqctl's commands over the management API: its own option set (-p is the
        # password before the command and the vhost after it, as in rabbitmqctl).
        from amqpd.admin.ctl import main as ctl_main

        return ctl_main(arguments[1:])
    args = _parser().parse_args(arguments)
    if args.command == "hash-password":
        password = args.password if args.password is not None else getpass.getpass()
        print(hash_password(password))  # noqa: T201 - the command's output
        return 0
    if args.command == "import-definitions":
        return import_definitions(args)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "config":
        try:
            settings = load(args)
        except ConfigError as exc:
            return _fail(str(exc))
        from amqpd.config.loader import show

        sys.stdout.write(show(settings))
        return 0
    if args.command == "ping":
        return ping_command(args)
    if args.command == "export-topology":
        return export_topology(args)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
