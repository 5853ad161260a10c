"""``amqpd ctl``: rabbitmqctl's everyday commands on top of the management HTTP API.

rabbitmqctl talks Erlang distribution, which amqpd does not; this client keeps its
command names, default columns and tab-separated output (header row unless ``-q``, or
``--formatter json``) so scripts and habits carry over. It only uses the standard library,
so it works from any machine that can reach the API.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

DEFAULT_URL = "http://127.0.0.1:15672/api/"

#: rabbitmqctl's default columns per list command.
DEFAULT_COLUMNS = {
    "list_queues": ["name", "messages"],
    "list_exchanges": ["name", "type"],
    "list_bindings": ["source_name", "source_kind", "destination_name", "destination_kind",
                      "routing_key", "arguments"],
    "list_connections": ["user", "peer_host", "peer_port", "state"],
    "list_channels": ["pid", "user", "consumer_count", "messages_unacknowledged"],
    "list_consumers": ["queue_name", "channel_pid", "consumer_tag", "ack_required",
                       "prefetch_count", "active", "arguments"],
    "list_policies": ["vhost", "name", "pattern", "apply-to", "definition", "priority"],
    # amqpd's own: streams' consumer groups (rabbitmqctl has no such command).
    "list_stream_groups": ["queue", "group", "committed_offset", "lag", "consumers"],
}
#: rabbitmqctl column names that the API spells differently (dotted paths into its JSON).
_ALIASES = {
    "list_bindings": {"source_name": "source", "destination_name": "destination",
                      "destination_kind": "destination_type"},
    "list_channels": {"pid": "name"},
    "list_consumers": {"queue_name": "queue.name", "channel_pid": "channel_details.name"},
    "list_connections": {"pid": "name"},
}
_ENDPOINTS = {
    "list_queues": "queues/{vhost}", "list_exchanges": "exchanges/{vhost}",
    "list_bindings": "bindings/{vhost}", "list_connections": "vhosts/{vhost}/connections",
    "list_channels": "vhosts/{vhost}/channels", "list_consumers": "consumers/{vhost}",
    "list_policies": "policies/{vhost}",
    "list_stream_groups": "stream-groups/{vhost}",
}


class CtlError(Exception):
    """A failed command; the text is printed on stderr and the exit code is 1 (2 for an
    unreachable broker, as rabbitmqctl's 69 would be unhelpful to scripts)."""

    def __init__(self, text: str, code: int = 1):
        super().__init__(text)
        self.code = code


class Client:
    """Basic-auth JSON requests to the API."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 10.0):
        self.url = url if url.endswith("/") else url + "/"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None for an empty one)."""
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                reason = json.loads(detail).get("reason", detail)
            except (ValueError, AttributeError):
                reason = detail or exc.reason
            raise CtlError(f"Error: {exc.code} {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CtlError(f"Error: cannot reach the management API at {self.url}: "
                           f"{getattr(exc, 'reason', exc)}", 2) from None
        return json.loads(text) if text.strip() else None


def _lookup(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _vhost(args: argparse.Namespace) -> str:
    return quote(args.vhost, safe="")


def list_command(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A list_* command: the rows with the requested columns."""
    command = args.command
    columns = args.columns or DEFAULT_COLUMNS[command]
    aliases = _ALIASES.get(command, {})
    items = client.call("GET", _ENDPOINTS[command].format(vhost=_vhost(args)))
    rows = []
    for item in items:
        row = {}
        for column in columns:
            if command == "list_bindings" and column == "source_kind":
                row[column] = "exchange"
            else:
                row[column] = _lookup(item, aliases.get(column, column))
        rows.append(row)
    return rows


def _print_rows(rows: list[dict[str, Any]], columns: list[str], args: argparse.Namespace) -> None:
    if args.formatter == "json":
        print(json.dumps(rows))  # noqa: T201 - the command's output
        return
    if not args.quiet:
        print("\t".join(columns))  # noqa: T201
    for row in rows:
        print("\t".join(_cell(row[c]) for c in columns))  # noqa: T201


def _done(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and args.formatter != "json":
        print(text)  # noqa: T201


def run_command(client: Client, args: argparse.Namespace) -> None:
    """Carry out one parsed command."""
    command = args.command
    if command in DEFAULT_COLUMNS:
        _print_rows(list_command(client, args), args.columns or DEFAULT_COLUMNS[command], args)
    elif command in ("purge_queue", "delete_queue"):
        path = f"queues/{_vhost(args)}/{quote(args.queue, safe='')}"
        if command == "purge_queue":
            client.call("DELETE", path + "/contents")
            _done(args, f"Purging queue '{args.queue}' in vhost '{args.vhost}' ...")
        else:
            client.call("DELETE", path + _flags(args))
            _done(args, f"Deleting queue '{args.queue}' on vhost '{args.vhost}' ...")
    elif command in ("reset_stream_group_offset", "delete_stream_group"):
        path = (f"stream-groups/{_vhost(args)}/{quote(args.queue, safe='')}/"
                f"{quote(args.group, safe='')}")
        if command == "delete_stream_group":
            client.call("DELETE", path)
            _done(args, f"Deleting group '{args.group}' of stream '{args.queue}' ...")
        else:
            row = client.call("PUT", path, offset_body(args.offset))
            _done(args, f"Group '{args.group}' of stream '{args.queue}' now at offset "
                        f"{row['committed_offset']} (lag {row['lag']})")
    elif command == "close_connection":
        _close(client, args.connection, args.reason)
        _done(args, f"Closing connection {args.connection}, reason: {args.reason}...")
    elif command == "add_user":
        client.call("PUT", f"users/{quote(args.user, safe='')}",
                    {"password": args.new_password, "tags": ""})
        _done(args, f'Adding user "{args.user}" ...')
    elif command == "set_user_tags":
        _set_tags(client, args.user, args.tags)
        _done(args, f'Setting tags for user "{args.user}" to {args.tags} ...')
    elif command == "set_permissions":
        client.call("PUT", f"permissions/{_vhost(args)}/{quote(args.user, safe='')}",
                    {"configure": args.conf, "write": args.write, "read": args.read})
        _done(args, f'Setting permissions for user "{args.user}" in vhost "{args.vhost}" ...')
    elif command == "add_vhost":
        client.call("PUT", f"vhosts/{quote(args.name, safe='')}")
        _done(args, f'Adding vhost "{args.name}" ...')
    elif command == "set_policy":
        _set_policy(client, args)
    elif command == "clear_policy":
        _done(args, f'Clearing policy "{args.name}" on vhost "{args.vhost}" ...')
        client.call("DELETE", f"policies/{_vhost(args)}/{quote(args.name, safe='')}")
    elif command == "export_definitions":
        _export(client, args.path)
    elif command == "import_definitions":
        client.call("POST", "definitions", _read_json(args.path))
        _done(args, f'Importing definitions in JSON from a file at "{args.path}" ...')
    elif command == "status":
        _status(client, args)


def offset_body(text: str) -> dict[str, Any]:
    """The API body for an offset given on the command line: ``first``, ``last``, ``next``,
    an offset, an interval (``1h``: that long ago) or an ISO 8601 time (UTC if no zone)."""
    try:
        return {"offset": int(text)}
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return {"offset": text}  # the broker says what it accepts
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return {"timestamp": moment.timestamp()}


def _set_policy(client: Client, args: argparse.Namespace) -> None:
    """rabbitmqctl set_policy: the definition is JSON, the priority a number."""
    _done(args, f'Setting policy "{args.name}" for pattern "{args.pattern}" to '
                f'"{args.definition}" with priority "{args.priority}" for vhost '
                f'"{args.vhost}" ...')
    try:
        definition = json.loads(args.definition)
        priority = json.loads(args.priority)
    except ValueError as exc:
        raise CtlError(f"Error: the definition and the priority must be JSON: {exc}") from None
    client.call("PUT", f"policies/{_vhost(args)}/{quote(args.name, safe='')}",
                {"pattern": args.pattern, "definition": definition, "priority": priority,
                 "apply-to": args.apply_to})


def _flags(args: argparse.Namespace) -> str:
    flags = [f"{name}=true" for name, on in (("if-empty", args.if_empty),
                                             ("if-unused", args.if_unused)) if on]
    return "?" + "&".join(flags) if flags else ""


def _close(client: Client, name: str, reason: str) -> None:
    request_path = f"connections/{quote(name, safe='')}"
    client.headers["X-Reason"] = reason
    try:
        client.call("DELETE", request_path)
    finally:
        client.headers.pop("X-Reason", None)


def _set_tags(client: Client, user: str, tags: list[str]) -> None:
    path = f"users/{quote(user, safe='')}"
    current = client.call("GET", path)
    client.call("PUT", path, {"password_hash": current["password_hash"], "tags": tags})


def _read_json(path: str) -> Any:
    try:
        if path == "-":
            return json.loads(sys.stdin.read())
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as exc:
        raise CtlError(f"Error: cannot read definitions from {path}: {exc}") from None


def _export(client: Client, path: str) -> None:
    text = json.dumps(client.call("GET", "definitions"), indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def _status(client: Client, args: argparse.Namespace) -> None:
    overview = client.call("GET", "overview")
    node = client.call("GET", "nodes")[0]
    status = {
        "node": overview["node"], "product_name": overview["product_name"],
        "product_version": overview["product_version"],
        "rabbitmq_version": overview["rabbitmq_version"], "uptime_seconds":
        node["uptime"] // 1000, "memory_used": node["mem_used"], "memory_limit":
        node["mem_limit"], "memory_alarm": node["mem_alarm"], "disk_free": node["disk_free"],
        "file_descriptors_used": node["fd_used"],
        "listeners": [f"{x['protocol']} {x['ip_address']}:{x['port']}"
                      for x in overview["listeners"]],
        **overview["object_totals"],
    }
    if args.formatter == "json":
        print(json.dumps(status))  # noqa: T201
        return
    if not args.quiet:
        print(f"Status of node {status['node']} ...")  # noqa: T201
    for key, value in status.items():
        print(f"{key}\t{_cell(value)}")  # noqa: T201


def parser() -> argparse.ArgumentParser:
    """The ``amqpd ctl`` command line."""
    top = argparse.ArgumentParser(
        prog="amqpd ctl", description="rabbitmqctl's commands over the management HTTP API")
    top.add_argument("--url", default=DEFAULT_URL, help=f"API base URL (default {DEFAULT_URL})")
    top.add_argument("-u", "--username", default="guest")
    top.add_argument("-p", "--password", default="guest")
    top.add_argument("-q", "--quiet", action="store_true", help="no header row or banner")
    top.add_argument("--formatter", choices=["tsv", "json"], default="tsv")
    commands = top.add_subparsers(dest="command", required=True)
    for name in DEFAULT_COLUMNS:
        sub = commands.add_parser(name)
        sub.add_argument("-p", "--vhost", default="/")
        # rabbitmqctl takes -q after the command too; SUPPRESS keeps the global one.
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
        sub.add_argument("columns", nargs="*")
    for name in ("purge_queue", "delete_queue"):
        sub = commands.add_parser(name)
        sub.add_argument("-p", "--vhost", default="/")
        sub.add_argument("queue")
        if name == "delete_queue":
            sub.add_argument("--if-empty", action="store_true")
            sub.add_argument("--if-unused", action="store_true")
    for name in ("reset_stream_group_offset", "delete_stream_group"):
        # amqpd's own (Kafka's kafka-consumer-groups --reset-offsets / --delete): only for
        # a group without consumers.
        sub = commands.add_parser(name)
        sub.add_argument("-p", "--vhost", default="/")
        sub.add_argument("queue")
        sub.add_argument("group")
        if name == "reset_stream_group_offset":
            sub.add_argument("offset", help="first, last, next, an offset, an interval such "
                                            "as 1h, or an ISO 8601 time")
    sub = commands.add_parser("close_connection")
    sub.add_argument("connection")
    sub.add_argument("reason")
    sub = commands.add_parser("add_user")
    sub.add_argument("user")
    sub.add_argument("new_password", metavar="password")
    sub = commands.add_parser("set_user_tags")
    sub.add_argument("user")
    sub.add_argument("tags", nargs="*")
    sub = commands.add_parser("set_permissions")
    sub.add_argument("-p", "--vhost", default="/")
    sub.add_argument("user")
    sub.add_argument("conf")
    sub.add_argument("write")
    sub.add_argument("read")
    commands.add_parser("add_vhost").add_argument("name")
    sub = commands.add_parser("set_policy")
    sub.add_argument("-p", "--vhost", default="/")
    sub.add_argument("--priority", default="0")
    sub.add_argument("--apply-to", default="all", choices=["queues", "exchanges", "all"])
    sub.add_argument("name")
    sub.add_argument("pattern")
    sub.add_argument("definition")
    sub = commands.add_parser("clear_policy")
    sub.add_argument("-p", "--vhost", default="/")
    sub.add_argument("name")
    commands.add_parser("export_definitions").add_argument("path")
    commands.add_parser("import_definitions").add_argument("path")
    commands.add_parser("status")
    return top


def main(argv: Sequence[str]) -> int:
    """Entry point of ``amqpd ctl``; returns the exit code."""
    args = parser().parse_args(list(argv))
    # -q and --formatter are accepted after the command too (rabbitmqctl takes both).
    client = Client(args.url, args.username, args.password)
    try:
        run_command(client, args)
    except CtlError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return exc.code
    return 0
