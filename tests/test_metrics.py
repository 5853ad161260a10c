"""amqpd.metrics pieces that need no broker process: the commit histogram, the settings, and
the per-queue counters the queue keeps for the metrics (the HTTP endpoints are tested end to
end in interop/test_prometheus.py)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from amqpd.admin.readmodel import LiveState
from amqpd.broker.broker import Broker
from amqpd.broker.message import CLOCK, Message, route_for
from amqpd.config.loader import load_settings
from amqpd.config.settings import Settings
from amqpd.metrics.app import render
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.families import AGGREGATED, PER_OBJECT, BrokerCollector, Scrape

EMPTY_HEADER = bytes.fromhex("003c000000000000000000000000")  # class 60, size 0, no flags


def test_commit_histogram_buckets_are_cumulative_and_inclusive() -> None:
    stats = CommitStats()
    for seconds in (0.0005, 0.0007, 0.02, 9.0):
        stats.observe(seconds, 1)
    buckets = dict(stats.cumulative())
    assert buckets["0.0005"] == 1  # le: a latency equal to the bound is in that bucket
    assert buckets["0.001"] == 2
    assert buckets["0.025"] == 3
    assert buckets["2.5"] == 3
    assert buckets["+Inf"] == stats.count == 4
    assert stats.fsyncs == 4


def test_listener_settings_from_environment_and_flag(tmp_path: Path) -> None:
    defaults = load_settings(env={})
    assert (defaults.prometheus_host, defaults.prometheus_port) == ("127.0.0.1", 15692)
    assert load_settings(env={"AMQPD_PROMETHEUS_PORT": "0"}).prometheus_port == 0
    assert load_settings(env={}, cli={"--prometheus-port": "9419"}).prometheus_port == 9419


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_queue_counters_reach_the_families() -> None:
    broker = Broker(Settings(disk_free_limit=0))
    vhost = broker.vhosts["/"]
    target = vhost.declare_queue("dlx-target", None)
    vhost.declare_exchange("dlx", "fanout")
    vhost.bind("dlx", target, "", None)
    # x-max-length 1 with the default overflow (drop-head): the second message pushes the
    # first out, dead-lettered ("work", with a DLX) or dropped ("plain").
    work = vhost.declare_queue("work", None, arguments={"x-dead-letter-exchange": "dlx",
                                                        "x-max-length": 1})
    plain = vhost.declare_queue("plain", None, arguments={"x-max-length": 1})
    CLOCK.now -= 5.0  # these entries were enqueued five (coarse) seconds ago
    for queue in (work, work, plain, plain):
        queue.push(Message(route_for("", queue.name), EMPTY_HEADER, b""))
    CLOCK.now += 5.0
    state = LiveState(broker, list)
    per_queue = _samples(render(BrokerCollector(Scrape(state, None, 0), PER_OBJECT)))
    labels = (("queue", "work"), ("vhost", "/"))
    assert per_queue[("amqpd_queue_oldest_ready_seconds", labels)] >= 5.0
    assert per_queue[("amqpd_queue_messages_dead_lettered_total",
                      (("queue", "work"), ("reason", "maxlen"), ("vhost", "/")))] == 1
    assert ("amqpd_queue_messages_dead_lettered_total",
            (("queue", "plain"), ("reason", "maxlen"), ("vhost", "/"))) not in per_queue
    assert per_queue[("rabbitmq_queue_messages_ready", labels)] == 1
    assert per_queue[("rabbitmq_queue_messages_ready", (("queue", "dlx-target"),
                                                        ("vhost", "/")))] == 1
    totals = _samples(render(BrokerCollector(Scrape(state, None, 0), AGGREGATED)))
    name = "rabbitmq_global_messages_dead_lettered_maxlen_total"
    for strategy in ("at_most_once", "disabled"):
        assert totals[(name, (("dead_letter_strategy", strategy),
                              ("queue_type", "rabbit_classic_queue")))] == 1
    assert totals[("rabbitmq_queues_created_total", ())] == 3
    assert totals[("rabbitmq_queue_messages_ready", ())] == 3
    assert totals[("amqpd_queue_oldest_ready_seconds", ())] >= 5.0
