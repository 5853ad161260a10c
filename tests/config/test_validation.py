"""Every validation error of the configuration file: exact text, with FILE:LINE:COLUMN."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from amqpd.config.settings import Settings

TOP = ("auth, data_dir, limits, listeners, logging, permissions, queue_defaults, topology, "
       "topology_file, users, vhosts")
SIZE = "bytes (an integer) or a string like '128MiB' or '2GB'"
WATERMARK = ("a fraction of RAM as a number above 0 and at most 1 (like 0.4), or an absolute "
             "size of at least 1MiB (like '2GiB')")
GUEST = "{name: bob, password_hash: ''}"

CASES = [
    ("unknown top-level key", "prot: 1\n",
     f"F:1:1: unknown setting 'prot', expected one of: {TOP}"),
    ("old flat key points at its new place", "port: 5673\n",
     "F:1:1: unknown setting 'port' (did you mean 'listeners.amqp.port'?), expected one of: "
     + TOP),
    ("a top-level key nested one level down says where it belongs",
     "auth:\n  users: []\n",
     "F:2:3: unknown setting 'users' in auth ('users' belongs at the top level of the file), "
     "expected one of: default_pass, default_user, default_vhost, loopback_users"),
    ("unknown nested key", "listeners:\n  amqp:\n    prot: 1\n",
     "F:3:5: unknown setting 'prot' in listeners.amqp (did you mean 'port'?), expected one "
     "of: host, port"),
    ("string for an integer", "listeners:\n  amqp:\n    port: abc\n",
     "F:3:11: listeners.amqp.port: got the string 'abc', expected an integer from 0 to 65535"),
    ("integer out of range", "listeners:\n  amqp:\n    port: 70000\n",
     "F:3:11: listeners.amqp.port: got 70000, which is out of range, expected an integer "
     "from 0 to 65535"),
    ("float for an integer", "listeners:\n  amqp:\n    port: 1.5\n",
     "F:3:11: listeners.amqp.port: got the number 1.5, expected an integer from 0 to 65535"),
    ("boolean for an integer", "listeners:\n  amqp:\n    port: true\n",
     "F:3:11: listeners.amqp.port: got the boolean true, expected an integer from 0 to 65535"),
    ("scalar for a group", "limits: 5\n",
     "F:1:9: limits: got the integer 5, expected a mapping of settings"),
    ("frame_max below the AMQP minimum", "limits:\n  frame_max: 100\n",
     "F:2:14: limits.frame_max: got 100, which is out of range, expected an integer from "
     "4096 to 2147483647"),
    ("size with an unknown unit", "limits:\n  max_message_size: 12 parsecs\n",
     f"F:2:21: limits.max_message_size: got the string '12 parsecs', expected a size up to "
     f"512MiB: {SIZE}"),
    ("size too large", "limits:\n  max_message_size: 1GiB\n",
     f"F:2:21: limits.max_message_size: got '1GiB' (1073741824 bytes), which is out of "
     f"range, expected a size up to 512MiB: {SIZE}"),
    ("watermark fraction above 1", "limits:\n  memory_high_watermark: 1.5\n",
     f"F:2:26: limits.memory_high_watermark: got 1.5, which is out of range, expected "
     f"{WATERMARK}"),
    ("watermark absolute below 1MiB", "limits:\n  memory_high_watermark: 1\n",
     f"F:2:26: limits.memory_high_watermark: got 1, which is out of range, expected "
     f"{WATERMARK}"),
    ("unknown choice", "queue_defaults:\n  overflow: drop-tail\n",
     "F:2:13: queue_defaults.overflow: got the string 'drop-tail', expected one of "
     "drop-head, reject-publish, reject-publish-dlx"),
    ("bad duration", "queue_defaults:\n  message_ttl: 5 minutes\n",
     "F:2:16: queue_defaults.message_ttl: got the string '5 minutes', expected milliseconds "
     "(an integer >= 0) or a duration like '500ms', '30s', '5m', '1h', '1d' or null"),
    ("unknown log level", "logging:\n  level: verbose\n",
     "F:2:10: logging.level: got the string 'verbose', expected one of debug, info, "
     "warning, error, critical"),
    ("string for a boolean", "listeners:\n  tls:\n    verify_peer: yes please\n",
     "F:3:18: listeners.tls.verify_peer: got the string 'yes please', expected true or false"),
    ("unquoted number for a password", "auth:\n  default_pass: 1234\n",
     'F:2:17: auth.default_pass: got the integer 1234, expected a string (quote it: "1234")'),
    ("duplicate key", "limits:\n  heartbeat: 5\n  heartbeat: 6\n",
     "F:3:3: duplicate key 'heartbeat' (first at line 2), expected each key once"),
    ("YAML syntax error", "limits:\n  heartbeat: [5\n",
     "F:3:1: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("list at the top", "- a\n- b\n", "F:1:1: got a list, expected a mapping of settings"),
    ("TLS port without certificate", "listeners:\n  tls:\n    port: 5671\n",
     "F:3:11: listeners.tls: a TLS listener has no certfile, expected listeners.tls.certfile "
     "(PEM file)"),
    ("TLS on the AMQP port",
     "listeners:\n  amqp: {port: 5672}\n  tls: {port: 5672, certfile: a, keyfile: b}\n",
     "F:3:15: listeners.tls.port: 5672 is also listeners.amqp.port, expected another port"),
    ("fail_if_no_peer_cert without verify_peer",
     "listeners:\n  tls:\n    fail_if_no_peer_cert: true\n",
     "F:3:27: listeners.tls.fail_if_no_peer_cert: true without verify_peer, expected "
     "verify_peer: true as well"),
    ("low watermark above high", "limits:\n  output_low_watermark: 2MiB\n",
     "F:2:25: limits.output_low_watermark: 2097152 is above output_high_watermark (1048576), "
     "expected a value at most that"),
    ("plain password in the file", "users:\n  - name: bob\n    password: secret\n",
     "F:3:5: users[0].password: plain passwords are not accepted in files, expected "
     "password_hash (make one with `amqpd hash-password`)"),
    ("not a password hash", "users:\n  - name: bob\n    password_hash: nothash\n",
     "F:3:20: users[0].password_hash: not a RabbitMQ password hash, expected the base64 of a "
     "4-byte salt and a SHA-256 digest (make one with `amqpd hash-password`), or '' for a "
     "user that logs in with EXTERNAL only"),
    ("user without a name", "users:\n  - password_hash: ''\n",
     "F:2:5: users[0]: missing 'name', expected a value for it"),
    ("user twice", f"users:\n  - {GUEST}\n  - {GUEST}\n",
     "F:3:5: users[1]: user 'bob' is already defined at F:2:5, expected each user once"),
    ("users not a list", "users: {bob: 1}\n", "F:1:8: users: got a mapping, expected a list "
     "of users"),
    ("invalid permission regex",
     f"users:\n  - {GUEST}\npermissions:\n  - {{user: bob, vhost: /, configure: '(', "
     "write: '', read: ''}\n",
     "F:4:38: permissions[0].configure: '(' is not a valid regular expression (missing ), "
     "unterminated subpattern at position 0), expected a regular expression such as '.*', "
     "'^orders\\.' or '' (nothing)"),
    ("permission for an unknown user",
     "permissions:\n  - {user: nobody, vhost: /, configure: '', write: '', read: ''}\n",
     "F:2:5: permissions of user 'nobody' in vhost '/': no user 'nobody' is defined, "
     "expected one of the users: guest"),
    ("permission in an unknown vhost",
     "permissions:\n  - {user: guest, vhost: nope, configure: '', write: '', read: ''}\n",
     "F:2:5: permissions of user 'guest' in vhost 'nope': no vhost 'nope' is defined, "
     "expected one of the vhosts: / (or add it to vhosts)"),
    ("permission without write", "permissions:\n  - {user: guest, vhost: /, configure: ''}\n",
     "F:2:5: permissions[0]: missing 'write', expected a value for it"),
    ("unknown vhost field in the topology", "topology:\n  vhosts:\n    /:\n      queue: {}\n",
     "F:4:7: unknown vhost field 'queue' in topology.vhosts['/'] (did you mean 'queues'?), "
     "expected one of: bindings, exchanges, policies, queues"),
    ("exchange without type",
     "topology:\n  vhosts:\n    /:\n      exchanges:\n        e: {durable: true}\n",
     "F:5:12: topology.vhosts['/'].exchanges.e: missing 'type', expected an exchange type "
     "(direct, fanout, topic, headers, x-rules, x-consistent-hash, ...)"),
    ("reserved queue name", "topology:\n  vhosts:\n    /:\n      queues:\n        amq.q: {}\n",
     "F:5:9: topology.vhosts['/'].queues['amq.q']: queue name 'amq.q' uses the reserved "
     "prefix 'amq.', expected a name not starting with 'amq.'"),
    ("exclusive queue",
     "topology:\n  vhosts:\n    /:\n      queues:\n        q: {exclusive: true}\n",
     "F:5:13: topology.vhosts['/'].queues.q.exclusive: exclusive queues belong to a "
     "connection and cannot be declared here, expected durable, auto_delete or arguments"),
    ("negative x-message-ttl", "topology:\n  vhosts:\n    /:\n      queues:\n        q:\n"
     "          arguments: {x-message-ttl: -1}\n",
     "F:6:38: topology.vhosts['/'].queues.q.arguments.x-message-ttl: got -1, which is out of "
     "range, expected an integer >= 0"),
    ("string x-message-ttl", "topology:\n  vhosts:\n    /:\n      queues:\n        q:\n"
     "          arguments: {x-message-ttl: '5'}\n",
     "F:6:38: topology.vhosts['/'].queues.q.arguments.x-message-ttl: got the string '5', "
     "expected an integer >= 0"),
    ("bad destination_type", "topology:\n  vhosts:\n    /:\n      bindings:\n"
     "        - {source: e, destination: q, destination_type: topic}\n",
     "F:5:57: topology.vhosts['/'].bindings[0].destination_type: got the string 'topic', "
     "expected queue or exchange"),
    ("binding without destination",
     "topology:\n  vhosts:\n    /:\n      bindings:\n        - {source: e}\n",
     "F:5:11: topology.vhosts['/'].bindings[0]: missing 'destination', expected a value for "
     "it"),
    ("x-rule not a string", "topology:\n  vhosts:\n    /:\n      bindings:\n"
     "        - {source: e, destination: q, arguments: {x-rule: 5}}\n",
     "F:5:59: topology.vhosts['/'].bindings[0].arguments.x-rule: got the integer 5, expected "
     "a string"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_message(error: Callable[[str], str], text: str, message: str) -> None:
    assert error(text) == message


def test_missing_topology_file(error: Callable[[str], str]) -> None:
    assert error("topology_file: /nonexistent/t.yaml\n") == (
        "/nonexistent/t.yaml: cannot read the file: No such file or directory"
    )


def test_topology_file_errors_name_that_file(
    error: Callable[[str], str], write: Callable[[str, str], object]
) -> None:
    path = write("vhosts:\n  /:\n    queues:\n      q: {durable: maybe}\n", "topo.yaml")
    assert error(f"topology_file: {path}\n") == (
        f"{path}:4:20: vhosts['/'].queues.q.durable: got the string 'maybe', expected true "
        "or false"
    )


def test_topology_file_and_inline_topology_must_agree(
    error: Callable[[str], str], write: Callable[[str, str], object]
) -> None:
    path = write("vhosts:\n  /:\n    queues:\n      q: {durable: false}\n", "topo.yaml")
    message = error(f"topology_file: {path}\ntopology:\n  vhosts:\n    /:\n      queues:\n"
                    "        q: {}\n")
    assert message == (
        f"{path}:4:7: queue 'q' in vhost '/' is declared differently at F:6:9, expected the "
        "same declaration"
    )


def test_empty_file_gives_the_defaults(load: Callable[..., Settings]) -> None:
    settings = load("")
    assert (settings.host, settings.port, settings.frame_max) == ("localhost", 5672, 131072)


def test_shipped_config_equals_the_defaults() -> None:
    from pathlib import Path

    from amqpd.config.loader import load_settings

    shipped = load_settings(Path(__file__).parents[2] / "config" / "amqpd.yaml", env={})
    defaults = Settings()
    for name in Settings.__dataclass_fields__:
        if name not in ("config_file", "sources", "cli_overrides"):
            assert getattr(shipped, name) == getattr(defaults, name), name


def test_values_are_converted(load: Callable[..., Settings]) -> None:
    settings = load(
        """
        listeners:
          amqp: {host: 0.0.0.0, port: 5673}
        limits:
          max_message_size: 16MiB
          memory_high_watermark: 2GiB
          output_high_watermark: 1000kB
          close_timeout: 1
        queue_defaults:
          message_ttl: 30s
          consumer_timeout: 1h
          expires: 1500ms
          max_length_bytes: 1GB
        logging: {level: debug, format: json}
        auth:
          loopback_users: []
        vhosts: [a, b]
        """
    )
    assert settings.host == "0.0.0.0" and settings.port == 5673
    assert settings.max_message_size == 16 * 1024 * 1024
    assert settings.memory_high_watermark_bytes == 2 * 1024**3
    assert settings.output_high_watermark == 1_000_000
    assert settings.close_timeout == 1.0
    defaults = settings.queue_defaults
    assert (defaults.message_ttl, defaults.consumer_timeout, defaults.expires) == (
        30_000, 3_600_000, 1500
    )
    assert defaults.max_length_bytes == 10**9
    assert settings.log_format == "json"
    assert settings.loopback_users == []
    assert settings.vhosts == ["a", "b"]


def test_fraction_watermark_is_a_share_of_memory(load: Callable[..., Settings]) -> None:
    from amqpd.config.settings import total_memory

    settings = load("limits:\n  memory_high_watermark: 0.5\n")
    assert settings.memory_high_watermark_bytes == total_memory() // 2
