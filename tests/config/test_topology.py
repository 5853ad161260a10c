"""Topology: plan, apply all or nothing, conflicts naming both sides, idempotence, export
round trip, configure_broker and reload (in-process)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from amqpd.access.auth import hash_password
from amqpd.access.permissions import AccessRefusedError, authorize
from amqpd.broker.broker import Broker
from amqpd.config.loader import load_settings
from amqpd.config.model import Topology
from amqpd.config.nodes import Origin, compose_text
from amqpd.config.parse import load_topology, parse_topology
from amqpd.config.settings import Settings
from amqpd.topology.apply import TopologyError, apply_topology, configure_broker, plan
from amqpd.topology.export import export_topology, topology_from_broker
from amqpd.topology.reload import reload

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "topology.example.yaml"


def topology(text: str) -> Topology:
    origin = Origin("T")
    return parse_topology(compose_text(textwrap.dedent(text), origin), origin)


def state(broker: Broker) -> dict[str, Any]:
    """Everything observable about the broker's topology and users."""
    result: dict[str, Any] = {}
    for name, vhost in broker.vhosts.items():
        result[name] = {
            "exchanges": {n: (e.type_name, e.durable, e.auto_delete, e.internal,
                              dict(e.arguments)) for n, e in vhost.exchanges.items()},
            "queues": {n: (q.durable, q.auto_delete, dict(q.arguments))
                       for n, q in vhost.queues.items()},
            "bindings": sorted(
                (n, b.destination.name, b.routing_key, repr(sorted(b.arguments.items())))
                for n, e in vhost.exchanges.items() if e.kind is not None
                for b in e.kind.bindings()
            ),
        }
    result["users"] = {  # the default user's hash has a random salt
        n: (u.password_hash if n != "guest" else "-", sorted(u.tags), u.loopback_only,
            {v: (p.configure, p.write, p.read) for v, p in u.permissions.items()})
        for n, u in broker.users.users.items()
    }
    return result


def test_example_applies_and_routes() -> None:
    broker = Broker()
    planned = apply_topology(broker, load_topology(EXAMPLE))
    assert "declare exchange 'tickets' (x-rules) in vhost '/'" in planned.describe()
    vhost = broker.vhosts["/"]
    assert vhost.exchanges["orders"].type_name == "topic"
    assert vhost.queues["order-emails"].arguments == {
        "x-dead-letter-exchange": "orders.dlx", "x-delivery-limit": 5}
    assert "daily-report" in broker.vhosts["reporting"].queues
    reporter = broker.users.users["reporter"]
    assert reporter.vhosts == {"reporting"} and reporter.tags == ["monitoring"]
    authorize(reporter, "reporting", "read", "queue", "daily-report")
    with pytest.raises(AccessRefusedError):
        authorize(reporter, "reporting", "configure", "queue", "daily-report")


def test_reapplying_changes_nothing() -> None:
    broker = Broker()
    parsed = load_topology(EXAMPLE)
    apply_topology(broker, parsed)
    before = state(broker)
    again = plan(broker, _desired(broker, parsed))
    assert again.is_empty() and again.describe() == []
    apply_topology(broker, load_topology(EXAMPLE))
    assert state(broker) == before


def _desired(broker: Broker, parsed: Topology) -> Any:
    from amqpd.topology.apply import Desired

    return Desired(parsed, [], dict(parsed.users), list(parsed.permissions),
                   list(broker.settings.loopback_users))


def test_conflict_names_both_sides_and_applies_nothing() -> None:
    broker = Broker()
    vhost = broker.vhosts["/"]
    vhost.declare_queue("jobs", None, durable=True, arguments={"x-message-ttl": 1000})
    vhost.declare_exchange("events", "fanout", durable=True)
    before = state(broker)
    wanted = topology("""
        vhosts:
          /:
            exchanges:
              events: {type: topic}
              brand-new: {type: direct}
            queues:
              jobs:
                arguments: {x-message-ttl: 2000}
              other: {}
            bindings:
              - {source: brand-new, destination: other}
          extra: {}
    """)
    with pytest.raises(TopologyError) as info:
        apply_topology(broker, wanted)
    assert info.value.problems == [
        "T:5:7: exchange 'events' in vhost '/' already exists (declared by a client or "
        "restored from the data directory) and differs: type is 'topic' in the topology but "
        "'fanout' in the broker; expected the same declaration (delete the exchange first "
        "to change it)",
        "T:8:7: queue 'jobs' in vhost '/' already exists (declared by a client or restored "
        "from the data directory) and differs: argument 'x-message-ttl' is '2000' in the "
        "topology but '1000' in the broker; expected the same declaration (delete the queue "
        "first to change it)",
    ]
    assert state(broker) == before  # not even 'brand-new', 'other' or vhost 'extra'


def test_conflict_with_an_earlier_topology_names_its_file() -> None:
    broker = Broker()
    apply_topology(broker, topology("vhosts:\n  /:\n    queues:\n      q: {durable: true}\n"))
    with pytest.raises(TopologyError) as info:
        apply_topology(broker, topology("vhosts:\n  /:\n    queues:\n      q: {durable: "
                                        "false}\n"))
    assert info.value.problems == [
        "T:4:7: queue 'q' in vhost '/' already exists (T:4:7) and differs: durable is "
        "'false' in the topology but 'true' in the broker; expected the same declaration "
        "(delete the queue first to change it)"
    ]


@pytest.mark.parametrize(("text", "problem"), [
    ("vhosts:\n  /:\n    bindings:\n      - {source: nowhere, destination: q}\n",
     "T:4:9: binding of queue 'q' to exchange 'nowhere' in vhost '/': no exchange 'nowhere', "
     "expected an exchange declared in the topology or in the broker"),
    ("vhosts:\n  /:\n    exchanges:\n      e: {type: fanout}\n    bindings:\n"
     "      - {source: e, destination: q}\n",
     "T:6:9: binding of queue 'q' to exchange 'e' in vhost '/': no queue 'q', expected a "
     "queue declared in the topology or in the broker"),
    ("vhosts:\n  /:\n    exchanges:\n      e: {type: x-nonsense}\n",
     "T:4:7: exchange 'e' in vhost '/': unknown exchange type 'x-nonsense', expected one of: "),
    ("vhosts:\n  /:\n    exchanges:\n      r: {type: x-rules}\n    queues:\n      q: {}\n"
     "    bindings:\n      - {source: r, destination: q, arguments: {x-rule: 'headers.a ==='}}\n",
     "T:8:9: binding of queue 'q' to exchange 'r' in vhost '/': invalid binding: "),
    ("vhosts:\n  /:\n    queues:\n      q:\n        arguments: {x-dead-letter-routing-key: k}\n",
     "T:4:7: invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': "
     "x-dead-letter-exchange is required too"),
])
def test_plan_errors(text: str, problem: str) -> None:
    broker = Broker()
    before = state(broker)
    with pytest.raises(TopologyError) as info:
        apply_topology(broker, topology(text))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem)
    assert state(broker) == before


def test_a_failing_step_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    from amqpd.broker.vhost import VirtualHost

    broker = Broker()
    before = state(broker)
    real_bind = VirtualHost.bind
    calls = []

    def flaky_bind(self: VirtualHost, *args: Any) -> None:
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        real_bind(self, *args)

    monkeypatch.setattr(VirtualHost, "bind", flaky_bind)
    with pytest.raises(TopologyError, match="disk on fire; nothing was applied"):
        apply_topology(broker, load_topology(EXAMPLE))
    assert state(broker) == before


def test_export_round_trips() -> None:
    first = Broker()
    apply_topology(first, load_topology(EXAMPLE))
    exported = export_topology(first)
    second = Broker()
    apply_topology(second, topology(exported))
    assert export_topology(second) == exported
    assert state(second) == state(first)
    # same as the source file modulo order and the defaults written out
    original = load_topology(EXAMPLE)
    again = topology(exported)
    for name, vhost in original.vhosts.items():
        assert {k: v.key() for k, v in vhost.queues.items()} == \
            {k: v.key() for k, v in again.vhosts[name].queues.items()}
        assert {k: v.key() for k, v in vhost.exchanges.items()} == \
            {k: v.key() for k, v in again.vhosts[name].exchanges.items()}
        assert sorted(b.key() for b in vhost.bindings) == \
            sorted(b.key() for b in again.vhosts[name].bindings)
    assert [u.key() for u in original.users.values()] == \
        [u.key() for u in again.users.values()]
    assert [p.key() for p in original.permissions] == [p.key() for p in again.permissions]


def test_export_leaves_out_builtins_exclusive_and_default_user() -> None:
    broker = Broker()
    vhost = broker.vhosts["/"]
    owner = object()
    vhost.declare_queue("mine", owner, exclusive=True)  # type: ignore[arg-type]
    vhost.declare_queue("kept", None, durable=False)
    vhost.bind("amq.topic", vhost.queues["kept"], "a.#", {})
    vhost.bind("amq.topic", vhost.queues["mine"], "b.#", {})
    document = yaml.safe_load(export_topology(broker))
    assert document == {"vhosts": {"/": {
        "queues": {"kept": {"durable": False, "auto_delete": False}},
        "bindings": [{"source": "amq.topic", "destination": "kept",
                      "destination_type": "queue", "routing_key": "a.#"}],
    }}}
    assert topology_from_broker(broker).users == {}


def test_exchange_to_exchange_bindings_round_trip() -> None:
    text = """
        vhosts:
          /:
            exchanges:
              up: {type: topic}
              down: {type: headers, arguments: {alternate-exchange: up}}
            bindings:
              - {source: up, destination: down, destination_type: exchange, routing_key: "#"}
              - source: down
                destination: up
                destination_type: exchange
                arguments: {x-match: any, region: eu}
    """
    broker = Broker()
    apply_topology(broker, topology(text))
    exported = export_topology(broker)
    other = Broker()
    apply_topology(other, topology(exported))
    assert state(other) == state(broker)


def config_text(password_hash: str, extra: str = "") -> str:
    return textwrap.dedent(f"""
        vhosts: [staging]
        users:
          - {{name: alice, password_hash: "{password_hash}", tags: [management]}}
        permissions:
          - {{user: alice, vhost: staging, configure: "^alice-", write: ".*", read: ".*"}}
          - {{user: guest, vhost: staging, configure: "", write: "", read: ".*"}}
        topology:
          vhosts:
            staging:
              queues:
                alice-work: {{}}
    """) + extra


def test_configure_broker_creates_users_vhosts_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.yaml"
    password_hash = hash_password("pw")
    path.write_text(config_text(password_hash))
    settings = load_settings(path, env={})
    broker = Broker(settings)
    configure_broker(broker, settings)
    alice = broker.users.users["alice"]
    assert (alice.password_hash, alice.tags, alice.vhosts) == (
        password_hash, ["management"], {"staging"})
    authorize(alice, "staging", "configure", "queue", "alice-x")
    with pytest.raises(AccessRefusedError):
        authorize(alice, "staging", "configure", "queue", "bob-x")
    guest = broker.users.users["guest"]
    assert guest.vhosts == {"/", "staging"}  # the default user keeps '/'
    assert "alice-work" in broker.vhosts["staging"].queues
    assert configure_broker(broker, settings).is_empty()


def test_reload_applies_additions_and_changes(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "amqpd.yaml"
    first_hash, second_hash = hash_password("one"), hash_password("two")
    path.write_text(config_text(first_hash))
    settings = load_settings(path, env={}, cli={"--port": "0"})
    broker = Broker(settings)
    configure_broker(broker, settings)
    alice = broker.users.users["alice"]
    path.write_text(config_text(second_hash, textwrap.dedent("""
        limits: {heartbeat: 5}
        listeners: {amqp: {port: 6000, host: 0.0.0.0}}
    """)).replace('configure: "^alice-"', 'configure: ".*"').replace(
        "alice-work: {}", "alice-work: {}\n        alice-more: {}"))
    with caplog.at_level(logging.INFO):
        result = reload(broker, env={})
    assert result.ok, result.error
    assert broker.users.users["alice"] is alice  # changed in place: open connections see it
    assert alice.password_hash == second_hash
    authorize(alice, "staging", "configure", "queue", "bob-x")
    assert "alice-more" in broker.vhosts["staging"].queues
    assert broker.settings.heartbeat == 5
    assert broker.settings.port == 0  # the command line still wins over the file
    assert broker.settings.host == "localhost"  # read at start only
    assert result.needs_restart == [
        "listeners.amqp.host changed (localhost -> 0.0.0.0) but is read at start only; "
        "still localhost until a restart"
    ]
    assert "limits.heartbeat: 60 -> 5" in result.applied
    assert "reload: listeners.amqp.host changed" in caplog.text


def test_reload_removes_users_and_leaves_queues(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.yaml"
    path.write_text(config_text(hash_password("pw")))
    settings = load_settings(path, env={})
    broker = Broker(settings)
    configure_broker(broker, settings)
    alice = broker.users.users["alice"]
    path.write_text("vhosts: [staging]\n")
    result = reload(broker, env={})
    assert result.ok, result.error
    assert "alice" not in broker.users.users and alice.vhosts == set()
    assert broker.users.users["guest"].vhosts == {"/"}
    assert "alice-work" in broker.vhosts["staging"].queues
    assert result.left_alone == [
        f"queue 'alice-work' in vhost 'staging' (from {path}:12:9) is no longer in the "
        "topology; left in place (delete it with AMQP)"
    ]


@pytest.mark.parametrize("broken", [
    "topology: {vhosts: {staging: {queues: {alice-work: {durable: false}}}}}\n",  # conflict
    "limits: {heartbeat: [\n",  # not YAML
    "limits: {heartbeat: -1}\nvhosts: [more]\n",  # invalid value
    "vhosts: [x]\ntopology: {vhosts: {x: {bindings: [{source: nope, destination: q}]}}}\n",
])
def test_broken_reload_leaves_the_broker_as_it_was(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "amqpd.yaml"
    path.write_text(config_text(hash_password("pw")))
    settings = load_settings(path, env={})
    broker = Broker(settings)
    configure_broker(broker, settings)
    before = state(broker)
    heartbeat = broker.settings.heartbeat
    path.write_text(config_text(hash_password("new")) + broken
                    if broken.startswith("limits") else broken)
    with caplog.at_level(logging.ERROR):
        result = reload(broker, env={})
    assert not result.ok and result.error
    assert "reload failed, nothing changed" in caplog.text
    assert state(broker) == before
    assert broker.settings.heartbeat == heartbeat


def test_settings_topology_and_users_merge(write: Callable[[str, str], Path]) -> None:
    password_hash = hash_password("pw")
    topo = write(f"users:\n  - {{name: carol, password_hash: '{password_hash}'}}\n"
                 "permissions:\n  - {user: carol, vhost: /, configure: '', write: '', "
                 "read: ''}\n", "topo.yaml")
    settings = load_settings(None, env={}, cli={"--topology": str(topo)})
    broker = Broker(settings)
    configure_broker(broker)
    assert broker.users.users["carol"].vhosts == {"/"}
    assert isinstance(settings, Settings)
