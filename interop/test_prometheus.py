"""The Prometheus endpoints (RabbitMQ's rabbitmq_prometheus names, types and labels), scraped
over HTTP and parsed with prometheus_client's parser.

By default a fresh amqpd of its own is started (so the counters seen are this module's alone);
with ``AMQP_URL`` and ``AMQP_PROMETHEUS_URL`` (``interop/rabbitmq.py run`` sets both) the same
tests run against that broker -- a real RabbitMQ is the reference for names and labels, and the
amqpd-only figures are marked ``amqpd_only``. Counters are compared as deltas between two
scrapes; RabbitMQ updates per-queue figures about once a second, hence the polling.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_NAMES = REPO_ROOT / "tests" / "data" / "grafana_rabbitmq_overview_metrics.txt"
# The message size histogram is RabbitMQ 4.0+: Debian's 3.10 does not have it (amqpd does,
# at one list increment per publish).
NOT_IN_RABBITMQ_3_10 = {"rabbitmq_message_size_bytes_bucket", "rabbitmq_message_size_bytes_count",
                "rabbitmq_message_size_bytes_sum"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Target:
    amqp_url: str
    metrics_url: str  # http://host:port/metrics
    amqpd: bool


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    amqp_url = os.environ.get("AMQP_URL")
    if amqp_url:
        metrics_url = os.environ.get("AMQP_PROMETHEUS_URL")
        if not metrics_url:
            pytest.skip("set AMQP_PROMETHEUS_URL with AMQP_URL")
        yield Target(amqp_url, metrics_url.rstrip("/"), False)
        return
    data_dir = tmp_path_factory.mktemp("amqpd-prometheus")
    process = subprocess.Popen(
        [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(data_dir), "--log-level", "warning", "--management-port", "0",
         "--prometheus-port", "0"],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # for the broker's whole life, so the pipe never fills
        for line in process.stdout or ():
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    amqp = metrics = None
    try:
        deadline = time.monotonic() + 15
        while amqp is None or metrics is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("amqpd listening on ") and amqp is None:
                amqp = line.rsplit(" ", 1)[1].strip()
            elif line.startswith("amqpd prometheus listening on "):
                metrics = line.rsplit(" ", 1)[1].strip()
        yield Target(f"amqp://guest:guest@{amqp}/%2F", f"http://{metrics}/metrics", True)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert code == 0, "amqpd did not stop cleanly on SIGTERM"


def fetch(url: str) -> tuple[str, str]:
    """(content type, body)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def scrape(url: str) -> tuple[dict[str, tuple[str, set[str]]], Samples]:
    """Families as {name: (type, label names)} and samples as {(name, labels): value}."""
    _, text = fetch(url)
    families: dict[str, tuple[str, set[str]]] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        families[family.name] = (family.type, labels)
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


# Families both brokers emit on /metrics, with RabbitMQ's type and labels. The parser strips
# _total from counter family names.
AGGREGATED = {
    "rabbitmq_connections_opened": ("counter", set()),
    "rabbitmq_connections_closed": ("counter", set()),
    "rabbitmq_channels_opened": ("counter", set()),
    "rabbitmq_channels_closed": ("counter", set()),
    "rabbitmq_queues_declared": ("counter", set()),
    "rabbitmq_queues_created": ("counter", set()),
    "rabbitmq_queues_deleted": ("counter", set()),
    "rabbitmq_process_open_fds": ("gauge", set()),
    "rabbitmq_process_max_fds": ("gauge", set()),
    "rabbitmq_process_resident_memory_bytes": ("gauge", set()),
    "rabbitmq_resident_memory_limit_bytes": ("gauge", set()),
    "rabbitmq_disk_space_available_bytes": ("gauge", set()),
    "rabbitmq_disk_space_available_limit_bytes": ("gauge", set()),
    "rabbitmq_erlang_uptime_seconds": ("gauge", set()),
    "rabbitmq_queue_messages_ready": ("gauge", set()),
    "rabbitmq_queue_messages_unacked": ("gauge", set()),
    "rabbitmq_queue_messages": ("gauge", set()),
    "rabbitmq_queue_consumers": ("gauge", set()),
    "rabbitmq_queue_messages_bytes": ("gauge", set()),
    "rabbitmq_queue_messages_ready_bytes": ("gauge", set()),
    "rabbitmq_queue_messages_unacked_bytes": ("gauge", set()),
    "rabbitmq_queue_messages_ready_ram": ("gauge", set()),
    "rabbitmq_queue_messages_paged_out": ("gauge", set()),
    "rabbitmq_queue_messages_paged_out_bytes": ("gauge", set()),
    "rabbitmq_channel_consumers": ("gauge", set()),
    "rabbitmq_channel_messages_unacked": ("gauge", set()),
    "rabbitmq_channel_prefetch": ("gauge", set()),
    "rabbitmq_consumer_prefetch": ("gauge", set()),
    "rabbitmq_connection_channels": ("gauge", set()),
    "rabbitmq_connections": ("gauge", set()),
    "rabbitmq_channels": ("gauge", set()),
    "rabbitmq_consumers": ("gauge", set()),
    "rabbitmq_queues": ("gauge", set()),
    "rabbitmq_alarms_file_descriptor_limit": ("unknown", set()),
    "rabbitmq_alarms_free_disk_space_watermark": ("unknown", set()),
    "rabbitmq_alarms_memory_used_watermark": ("unknown", set()),
    "rabbitmq_build_info": ("unknown", {"rabbitmq_version", "erlang_version",
                                        "prometheus_plugin_version",
                                        "prometheus_client_version"}),
    "rabbitmq_global_consumers": ("gauge", {"protocol"}),
    "rabbitmq_global_publishers": ("gauge", {"protocol"}),
    **{f"rabbitmq_global_messages_{name}": ("counter", {"protocol"}) for name in (
        "received", "received_confirm", "routed", "confirmed", "unroutable_dropped",
        "unroutable_returned")},
    **{f"rabbitmq_global_messages_{name}": ("counter", {"protocol", "queue_type"}) for name in (
        "delivered", "delivered_consume_manual_ack", "delivered_consume_auto_ack",
        "delivered_get_manual_ack", "delivered_get_auto_ack", "get_empty", "redelivered",
        "acknowledged")},
    **{f"rabbitmq_global_messages_dead_lettered_{reason}": (
        "counter", {"queue_type", "dead_letter_strategy"})
        for reason in ("expired", "rejected", "maxlen")},
}
PER_OBJECT_QUEUE = ("rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
                    "rabbitmq_queue_messages", "rabbitmq_queue_consumers",
                    "rabbitmq_queue_messages_bytes", "rabbitmq_queue_messages_ready_bytes",
                    "rabbitmq_queue_messages_unacked_bytes")


def test_names_types_and_labels_on_metrics(target: Target) -> None:
    content_type, _ = fetch(target.metrics_url)
    assert content_type.startswith("text/plain")
    families, _ = scrape(target.metrics_url)
    for name, (kind, labels) in AGGREGATED.items():
        assert name in families, f"{name} missing"
        assert families[name][0] == kind, name
        assert labels <= families[name][1], (name, families[name][1])
    identity_labels = families["rabbitmq_identity_info"][1]
    assert {"rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id"} <= \
        identity_labels
    # Aggregated: no per-object labels at all.
    for name in PER_OBJECT_QUEUE:
        assert not families[name][1] & {"queue", "vhost"}, name


@pytest.mark.rabbitmq_differs(reason="rabbitmq_endpoint is RabbitMQ 3.11+; 3.10 has none")
def test_identity_names_the_endpoint(target: Target) -> None:
    if not target.amqpd:
        pytest.skip("RabbitMQ 3.10's identity_info has no rabbitmq_endpoint label")
    for path, endpoint in (("", "aggregated"), ("/per-object", "per-object"),
                           ("/detailed?family=queue_coarse_metrics", "detailed")):
        _, samples = scrape(target.metrics_url + path)
        info = [dict(labels) for (name, labels) in samples if name == "rabbitmq_identity_info"]
        assert [i["rabbitmq_endpoint"] for i in info] == [endpoint]
        assert any(name == "rabbitmq_build_info" for name, _ in samples)


def test_grafana_overview_dashboard_resolves(target: Target) -> None:
    """Every metric name the RabbitMQ-Overview dashboard queries is on /metrics."""
    wanted = [line.strip() for line in DASHBOARD_NAMES.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert len(wanted) > 30
    _, samples = scrape(target.metrics_url)
    present = {name for name, _ in samples}
    missing = [name for name in wanted if name not in present
               and (target.amqpd or name not in NOT_IN_RABBITMQ_3_10)]
    assert not missing, missing


def test_state_and_counters_after_pika_traffic(target: Target) -> None:
    before_families, before = scrape(target.metrics_url)
    ready_q, busy_q = f"prom-ready-{uuid.uuid4().hex[:8]}", f"prom-busy-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(target.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for name in (ready_q, busy_q):
            channel.queue_declare(name, auto_delete=True)
        for _ in range(5):
            channel.basic_publish("", ready_q, b"r" * 100, mandatory=True)
        for _ in range(3):
            channel.basic_publish("", busy_q, b"b" * 10)
        returned: list[bytes] = []
        channel.add_on_return_callback(lambda _ch, _m, _p, body: returned.append(body))
        with pytest.raises(pika.exceptions.UnroutableError):
            channel.basic_publish("amq.direct", "nowhere", b"x", mandatory=True)
        channel.basic_publish("amq.direct", "nowhere", b"y")  # dropped
        got = channel.basic_get(ready_q)  # manual ack, acked: ready 5 -> 4
        assert got[0] is not None
        channel.basic_ack(got[0].delivery_tag)
        consumer_channel = connection.channel()
        consumer_channel.basic_qos(prefetch_count=2)
        held: list[int] = []
        consumer_channel.basic_consume(
            busy_q, lambda _ch, method, _p, _b: held.append(method.delivery_tag))
        assert wait_for(lambda: connection.process_data_events(0.1) or len(held) == 2)
        empty = f"prom-empty-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(empty, auto_delete=True)
        assert channel.basic_get(empty, auto_ack=True) == (None, None, None)
        channel.queue_delete(empty)

        url = target.metrics_url + "/per-object"

        def queues_settled() -> bool:
            connection.process_data_events(0)
            _, now = scrape(url)
            return (value(now, "rabbitmq_queue_messages_ready", vhost="/", queue=ready_q) == 4
                    and value(now, "rabbitmq_queue_messages_unacked", vhost="/",
                              queue=busy_q) == 2
                    and value(now, "rabbitmq_queue_consumers", vhost="/", queue=busy_q) == 1)

        assert wait_for(queues_settled), scrape(url)[1]
        families, after = scrape(url)
        q = {"vhost": "/", "queue": busy_q}
        assert value(after, "rabbitmq_queue_messages_ready", **q) == 1
        assert value(after, "rabbitmq_queue_messages", **q) == 3
        assert value(after, "rabbitmq_queue_messages_ready", vhost="/", queue=ready_q) == 4
        assert value(after, "rabbitmq_queue_messages_unacked", vhost="/", queue=ready_q) == 0
        assert value(after, "rabbitmq_queue_consumers", vhost="/", queue=ready_q) == 0
        for name in PER_OBJECT_QUEUE:
            assert {"vhost", "queue"} <= families[name][1], name
        assert "channel" in families["rabbitmq_channel_consumers"][1]
        if target.amqpd:  # RabbitMQ counts these bytes with its own overheads
            assert value(after, "rabbitmq_queue_messages_ready_bytes", vhost="/",
                         queue=ready_q) == 400
            assert value(after, "rabbitmq_queue_messages_unacked_bytes", **q) == 20

        _, totals = scrape(target.metrics_url)

        def delta(name: str, **labels: str) -> float:
            return value(totals, name, **labels) - value(before, name, **labels)

        proto = {"protocol": "amqp091"}
        classic = {**proto, "queue_type": "rabbit_classic_queue"}
        g = "rabbitmq_global_messages_"
        assert delta(g + "received_total", **proto) == 10
        assert delta(g + "confirmed_total", **proto) == 10
        assert delta(g + "received_confirm_total", **proto) == 10
        assert delta(g + "routed_total", **proto) == 8
        assert delta(g + "unroutable_returned_total", **proto) == 1
        assert delta(g + "unroutable_dropped_total", **proto) == 1
        assert delta(g + "delivered_get_manual_ack_total", **classic) == 1
        assert delta(g + "delivered_consume_manual_ack_total", **classic) == 2
        assert delta(g + "delivered_total", **classic) == 3
        assert delta(g + "get_empty_total", **classic) == 1
        assert delta(g + "acknowledged_total", **classic) == 1
        if target.amqpd:  # 5 x 100 bytes, 3 x 10, 1 + 1 unroutable: buckets exact
            size = "rabbitmq_message_size_bytes"
            assert delta(size + "_count", **proto) == 10
            assert delta(size + "_sum", **proto) == 5 * 100 + 3 * 10 + 2
            assert delta(size + "_bucket", le="64.0", **proto) == 5
            assert delta(size + "_bucket", le="256.0", **proto) == 10
        assert delta("rabbitmq_queues_created_total") == 3
        assert delta("rabbitmq_queues_deleted_total") == 1
        assert delta("rabbitmq_connections_opened_total") == 1
        assert delta("rabbitmq_channels_opened_total") == 2
        assert value(totals, "rabbitmq_global_consumers", **proto) >= 1
        # RabbitMQ 3.10's own gauge drifts below zero once many publishers have come and
        # gone (seen after the whole interop suite: -364); only amqpd's is checked.
        if target.amqpd:
            assert value(totals, "rabbitmq_global_publishers", **proto) >= 1
        assert value(totals, "rabbitmq_connections") >= 1
        assert returned == [b"x"] or not returned  # pika raises and may also call back
        assert "rabbitmq_queues_created" in before_families
    finally:
        connection.close()


@pytest.mark.amqpd_only
def test_amqpd_queue_figures(target: Target) -> None:
    """Ages of the oldest ready message and unacked delivery, dead-lettering by reason,
    expiry, redeliveries and lease extensions, per queue; the store's commit histogram."""
    if not target.amqpd:
        pytest.skip("amqpd's own metrics")
    name, dlq = f"prom-x-{uuid.uuid4().hex[:8]}", f"prom-dlq-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(target.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.exchange_declare(dlq, "fanout", auto_delete=True)
        channel.queue_declare(dlq, auto_delete=True)
        channel.queue_bind(dlq, dlq)
        channel.queue_declare(name, durable=True, arguments={"x-dead-letter-exchange": dlq})
        for body in (b"expire", b"reject", b"redeliver", b"hold"):
            properties = pika.BasicProperties(
                delivery_mode=2, expiration="0" if body == b"expire" else None)
            channel.basic_publish("", name, body, properties)
        for expected in (b"reject", b"redeliver"):
            method, _, body = channel.basic_get(name)
            assert body == expected
            channel.basic_nack(method.delivery_tag, requeue=expected == b"redeliver")
        time.sleep(1.2)  # the ready head ("redeliver") ages; the coarse clock ticks at 0.1 s
        method, _, body = channel.basic_get(name)  # held unacked
        assert body == b"redeliver"
        channel.basic_publish("amq.lease", "", b"", pika.BasicProperties(
            headers={"x-delivery-tag": method.delivery_tag, "x-extend-ms": 60000}))
        time.sleep(0.3)
        _, samples = scrape(target.metrics_url + "/per-object")
        q = {"vhost": "/", "queue": name}
        assert value(samples, "amqpd_queue_oldest_ready_seconds", **q) >= 1.0
        assert 0.1 <= value(samples, "amqpd_queue_oldest_unacked_seconds", **q) < 1.0
        assert value(samples, "amqpd_queue_messages_expired_total", **q) == 1
        assert value(samples, "amqpd_queue_messages_redelivered_total", **q) == 1
        assert value(samples, "amqpd_queue_lease_extensions_total", **q) == 1
        for reason in ("expired", "rejected"):
            assert value(samples, "amqpd_queue_messages_dead_lettered_total", reason=reason,
                         **q) == 1
        assert value(samples, "rabbitmq_queue_messages_ready", vhost="/", queue=dlq) == 2
        _, totals = scrape(target.metrics_url)
        assert value(totals, "amqpd_store_commit_seconds_count") >= 1
        assert value(totals, "amqpd_store_fsyncs_total") >= 1
        assert value(totals, "amqpd_store_commit_seconds_bucket", le="+Inf") == \
            value(totals, "amqpd_store_commit_seconds_count")
        assert value(totals, "amqpd_queue_oldest_unacked_seconds") >= 0.1
        assert value(totals, "amqpd_queue_messages_dead_lettered_total", reason="rejected") >= 1
        channel.queue_delete(name)
    finally:
        connection.close()


def test_detailed_endpoint_filters_families_and_vhosts(target: Target) -> None:
    url = target.metrics_url + "/detailed?family=queue_coarse_metrics&family=vhost_status"
    families, samples = scrape(url)
    assert "rabbitmq_detailed_queue_messages_ready" in families
    assert "rabbitmq_detailed_queue_consumers" not in families
    assert "rabbitmq_queue_messages_ready" not in families
    assert value(samples, "rabbitmq_cluster_vhost_status", vhost="/") == 1
    assert "rabbitmq_identity_info" in families
    families, samples = scrape(target.metrics_url + "/detailed?family=queue_coarse_metrics"
                               "&vhost=no-such-vhost")
    assert not [key for key in samples if key[0] == "rabbitmq_detailed_queue_messages_ready"]


@pytest.mark.rabbitmq_differs(reason="RabbitMQ 3.10 writes a quote in a label value unescaped")
def test_queue_names_that_need_escaping_come_back_exactly(target: Target) -> None:
    """A queue name with quotes, a backslash and non-ASCII text is one label value, written
    escaped (by amqpd's own per-object renderer, amqpd.metrics.exposition) and read back
    unchanged by prometheus_client's parser."""
    if not target.amqpd:  # seen: rabbitmq_queue_messages_ready{vhost="/",queue="q "x""} 1
        pytest.skip("RabbitMQ 3.10 does not escape quotes in label values")
    name = f'prom "quoted" back\\slash ü✓ {uuid.uuid4().hex[:8]}'
    connection = pika.BlockingConnection(pika.URLParameters(target.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(name)
        for _ in range(2):
            channel.basic_publish("", name, b"e")
        q = {"vhost": "/", "queue": name}
        urls = {"rabbitmq_queue_messages_ready": target.metrics_url + "/per-object",
                "rabbitmq_detailed_queue_messages_ready":
                    target.metrics_url + "/detailed?family=queue_coarse_metrics"}
        for metric, url in urls.items():
            # RabbitMQ's per-queue figures lag by up to its 5 s collection interval.
            assert wait_for(lambda: value(scrape(url)[1], metric, **q) == 2), metric  # noqa: B023
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.channel().queue_delete(name)
        connection.close()
