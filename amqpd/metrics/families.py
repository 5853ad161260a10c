"""The metric families, built from the live broker at scrape time.

Names, types and labels are RabbitMQ's (``rabbitmq_prometheus``, checked against RabbitMQ 3.10
and the Grafana dashboard "RabbitMQ-Overview"), so its dashboards and alerts work unchanged:

- ``/metrics`` (aggregated): one series per family for the whole node, per-object families
  summed as RabbitMQ sums them;
- ``/metrics/per-object``: one series per queue (``vhost``, ``queue``), channel and connection
  (``channel``: the management API's connection or channel name -- RabbitMQ puts a pid there);
- ``/metrics/detailed?family=...&vhost=...``: the requested families only, per object, prefixed
  ``rabbitmq_detailed_`` (``rabbitmq_cluster_`` for vhost_status and the exchange families).

amqpd's own figures are under ``amqpd_``: on ``/metrics`` aggregated (ages as the maximum over
queues, counters summed), per queue on ``/metrics/per-object`` and in the detailed family
``amqpd_queue_metrics``.

Aggregated counters that are sums over queues (amqpd's per-queue counters, the dead-letter
counters) drop when a queue that contributed is deleted, as RabbitMQ's aggregated per-object
counters do; the broker-wide event counters (:class:`~amqpd.broker.stats.BrokerCounters`)
never go down.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import resource
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from amqpd import __version__
from amqpd.admin.readmodel import RABBITMQ_VERSION, LiveState, connection_name, unacked_by_queue
from amqpd.admin.streams_view import group_rows
from amqpd.broker.broker import DISK, MEMORY
from amqpd.broker.message import CLOCK
from amqpd.broker.queue import READY, Queue
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.exposition import ColumnFamily, SeriesLabels

PROTOCOL = "amqp091"
# Every amqpd queue counts as a classic queue in RabbitMQ's queue_type label (streams too:
# the broker-wide counters do not tell them apart).
QUEUE_TYPE = "rabbit_classic_queue"
DEAD_LETTER_REASONS = ("expired", "rejected", "maxlen", "delivery_limit")

AGGREGATED = "aggregated"
PER_OBJECT = "per-object"
DETAILED = "detailed"

#: The families /metrics/detailed knows (RabbitMQ's names, plus amqpd's own).
DETAILED_FAMILIES = frozenset({
    "connection_churn_metrics", "node_coarse_metrics", "node_metrics",
    "queue_coarse_metrics", "queue_consumer_count", "queue_metrics",
    "channel_metrics", "connection_metrics",
    "vhost_status", "exchange_bindings", "exchange_names",
    "amqpd_queue_metrics", "amqpd_store_metrics", "amqpd_stream_metrics",
})
# What /metrics and /metrics/per-object emit (RabbitMQ: every raw family; the cluster ones
# only on request).
_RAW_FAMILIES = DETAILED_FAMILIES - {"vhost_status", "exchange_bindings", "exchange_names",
                                     "queue_consumer_count"}

#: RabbitMQ's buckets of rabbitmq_message_size_bytes: 64 bytes to 256 MiB, powers of four.
SIZE_BUCKETS = tuple(64 * 4**n for n in range(12))


@dataclass(slots=True)
class Scrape:
    """The inputs of a scrape: the live broker, the store's commit figures and the free disk
    space when the broker's own disk probe has no reading (read off the event loop)."""

    state: LiveState
    commits: CommitStats | None = None
    disk_free: int | None = None


@dataclass(slots=True)
class _Selection:
    endpoint: str
    families: frozenset[str]
    vhosts: frozenset[str] | None = None
    queue_pattern: re.Pattern[str] | None = None
    per_object: bool = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.per_object = self.endpoint != AGGREGATED
        self.prefix = "rabbitmq_detailed_" if self.endpoint == DETAILED else "rabbitmq_"


class BrokerCollector:
    """A ``prometheus_client`` collector over one scrape of the broker."""

    def __init__(
        self,
        scrape: Scrape,
        endpoint: str = AGGREGATED,
        families: Collection[str] | None = None,
        vhosts: Collection[str] | None = None,
        queue_pattern: str | None = None,
    ):
        """``families``, ``vhosts`` and ``queue_pattern`` (a regular expression searched in
        queue names) only apply to the detailed endpoint.

        Raises:
            re.error: when ``queue_pattern`` is not a regular expression.
        """
        self.scrape = scrape
        if endpoint == DETAILED:
            chosen = frozenset(families or ()) & DETAILED_FAMILIES
            self.selection = _Selection(
                endpoint, chosen, frozenset(vhosts) if vhosts else None,
                re.compile(queue_pattern) if queue_pattern else None)
        else:
            self.selection = _Selection(endpoint, _RAW_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        """Every family of this endpoint, read now."""
        scrape, selection = self.scrape, self.selection
        families = selection.families
        if "connection_churn_metrics" in families:
            yield from _churn(scrape.state, selection.prefix)
        if "node_coarse_metrics" in families or "node_metrics" in families:
            yield from _node(scrape, selection)
        queues = _queues(scrape.state, selection)
        # Escaped once, shared by every per-queue family (see amqpd.metrics.exposition).
        queue_labels = (SeriesLabels(("vhost", "queue"), [(q.vhost_name, q.name) for q in queues])
                        if selection.per_object else None)
        if families & {"queue_coarse_metrics", "queue_consumer_count", "queue_metrics"}:
            yield from _queue_families(scrape.state, queues, queue_labels, selection)
        if "channel_metrics" in families or "connection_metrics" in families:
            yield from _session_families(scrape.state, selection)
        if families & {"vhost_status", "exchange_bindings", "exchange_names"}:
            yield from _cluster_families(scrape.state, selection)
        if "amqpd_queue_metrics" in families:
            yield from _amqpd_queue_families(scrape.state, queues, queue_labels)
        if "amqpd_store_metrics" in families:
            yield from _amqpd_store_families(scrape)
        if "amqpd_stream_metrics" in families:
            yield from _amqpd_stream_families(queues)
        if selection.endpoint != DETAILED:
            yield from _alarms(scrape.state)
            yield from _totals(scrape.state)
            yield from _global_counters(scrape.state, queues)
        yield from identity(scrape.state, selection.endpoint)


# -- identity ----------------------------------------------------------------------------


def identity(state: LiveState, endpoint: str) -> Iterator[Metric]:
    """``rabbitmq_build_info`` and ``rabbitmq_identity_info``, on every endpoint: Grafana's
    RabbitMQ dashboards join every panel on identity_info's ``rabbitmq_cluster``."""
    build = UnknownMetricFamily(
        "rabbitmq_build_info", "RabbitMQ & Erlang/OTP version info",
        labels=["rabbitmq_version", "prometheus_plugin_version", "prometheus_client_version",
                "erlang_version", "product_name", "product_version"])
    # erlang_version carries the Python version: amqpd runs on Python, not Erlang.
    build.add_metric([RABBITMQ_VERSION, __version__, _client_version(),
                      platform.python_version(), "amqpd", __version__], 1)
    yield build
    broker = state.broker
    ident = UnknownMetricFamily(
        "rabbitmq_identity_info", "RabbitMQ node & cluster identity info",
        labels=["rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id",
                "rabbitmq_endpoint"])
    ident.add_metric([state.node, broker.cluster_name, _permanent_id(state), endpoint], 1)
    yield ident


def _client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prometheus-client")
    except PackageNotFoundError:  # pragma: no cover - installed with amqpd
        return getattr(prometheus_client, "__version__", "unknown")


def _permanent_id(state: LiveState) -> str:
    """Stable across restarts: derived from the data directory's absolute path."""
    data_dir = str(Path(state.broker.settings.data_dir).resolve())
    digest = hashlib.sha256(data_dir.encode("utf-8", "surrogateescape")).hexdigest()[:22]
    return f"amqpd-cluster-id-{digest}"


# -- node ----------------------------------------------------------------------------------


def _churn(state: LiveState, prefix: str) -> Iterator[Metric]:
    stats = state.broker.stats
    connections = list(state.connections())  # handshaking ones too: they were counted
    channels = sum(len(c.channels) for c in connections)
    vhosts = list(state.broker.vhosts.values())
    values = (
        ("connections_opened_total", "Total number of connections opened",
         stats.connection_created),
        ("connections_closed_total", "Total number of connections closed or terminated",
         max(0, stats.connection_created - len(connections))),
        ("channels_opened_total", "Total number of channels opened", stats.channel_created),
        ("channels_closed_total", "Total number of channels closed",
         max(0, stats.channel_created - channels)),
        ("queues_declared_total", "Total number of queues declared",
         sum(v.queues_declared for v in vhosts)),
        ("queues_created_total", "Total number of queues created",
         sum(v.queues_created for v in vhosts)),
        ("queues_deleted_total", "Total number of queues deleted",
         sum(v.queues_deleted for v in vhosts)),
    )
    for name, doc, value in values:
        yield CounterMetricFamily(prefix + name, doc, value=value)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak instead
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _node(scrape: Scrape, selection: _Selection) -> Iterator[Metric]:
    broker = scrape.state.broker
    prefix = selection.prefix
    disk_free = broker.disk_free if broker.disk_free is not None else scrape.disk_free
    if "node_coarse_metrics" in selection.families:
        yield GaugeMetricFamily(prefix + "process_open_fds", "Open file descriptors",
                                value=_open_fds())
        yield GaugeMetricFamily(prefix + "process_resident_memory_bytes",
                                "Memory used in bytes", value=_rss_bytes())
        if disk_free is not None:
            yield GaugeMetricFamily(prefix + "disk_space_available_bytes",
                                    "Disk space available in bytes", value=disk_free)
    if "node_metrics" in selection.families:
        yield GaugeMetricFamily(prefix + "process_max_fds", "Open file descriptors limit",
                                value=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        # amqpd's memory alarm compares queued message bytes (amqpd_queued_bytes) with this
        # limit, not the process RSS (see amqpd.broker.broker.Broker.check_memory).
        yield GaugeMetricFamily(prefix + "resident_memory_limit_bytes",
                                "Memory high watermark in bytes", value=broker.memory_limit)
        yield GaugeMetricFamily(prefix + "disk_space_available_limit_bytes",
                                "Free disk space low watermark in bytes",
                                value=broker.disk_free_limit)
        yield GaugeMetricFamily(prefix + "erlang_uptime_seconds", "Node uptime",
                                value=time.monotonic() - scrape.state.started)


def _alarms(state: LiveState) -> Iterator[Metric]:
    alarms = state.broker.alarms
    for name, doc, raised in (
        ("file_descriptor_limit",
         "is 1 if file descriptor limit alarm is in effect", False),
        ("free_disk_space_watermark",
         "is 1 if free disk space watermark alarm is in effect", DISK in alarms),
        ("memory_used_watermark",
         "is 1 if VM memory watermark alarm is in effect", MEMORY in alarms),
    ):
        yield UnknownMetricFamily(f"rabbitmq_alarms_{name}", f"{doc}", value=int(raised))


def _totals(state: LiveState) -> Iterator[Metric]:
    connections = state.open_connections()
    channels = sum(len(c.channels) for c in connections)
    consumers = sum(len(ch.consumers) for c in connections for ch in c.channels.values())
    queues = sum(len(v.queues) for v in state.broker.vhosts.values())
    yield GaugeMetricFamily("rabbitmq_connections", "Connections currently open",
                            value=len(connections))
    yield GaugeMetricFamily("rabbitmq_channels", "Channels currently open", value=channels)
    yield GaugeMetricFamily("rabbitmq_consumers", "Consumers currently connected",
                            value=consumers)
    yield GaugeMetricFamily("rabbitmq_queues", "Queues available", value=queues)


def _global_counters(state: LiveState, queues: list[Queue]) -> Iterator[Metric]:
    """RabbitMQ's ``rabbitmq_global_*`` (rabbit_global_counters) from the broker's event
    counters; the dead-letter ones are sums over the queues' counters."""
    stats = state.broker.stats
    connections = state.open_connections()
    consumers = sum(len(ch.consumers) for c in connections for ch in c.channels.values())
    protocol = ["protocol"]
    by_type = ["protocol", "queue_type"]

    def counter(name: str, doc: str, value: int, per_type: bool = False) -> Metric:
        family = CounterMetricFamily(f"rabbitmq_global_messages_{name}", doc,
                                     labels=by_type if per_type else protocol)
        family.add_metric([PROTOCOL, QUEUE_TYPE] if per_type else [PROTOCOL], value)
        return family

    gauge = GaugeMetricFamily("rabbitmq_global_consumers", "Current number of consumers",
                              labels=protocol)
    gauge.add_metric([PROTOCOL], consumers)
    yield gauge
    unroutable = stats.return_unroutable + stats.drop_unroutable
    sizes = HistogramMetricFamily("rabbitmq_message_size_bytes",
                                  "Size of messages received from publishers", labels=protocol)
    buckets = [(str(float(bound)), count) for bound, count in stats.size_buckets(SIZE_BUCKETS)]
    sizes.add_metric([PROTOCOL], [*buckets, ("+Inf", stats.publish)], stats.size_sum)
    yield sizes
    yield counter("received_total", "Total number of messages received from publishers",
                  stats.publish)
    # amqpd does not count publishes on confirm-mode channels apart: every one of them is
    # confirmed right after routing or after its group commit, so the confirms sent are the
    # figure (in-flight confirms aside).
    yield counter("received_confirm_total",
                  "Total number of messages received from publishers expecting confirmations",
                  stats.confirm)
    yield counter("routed_total", "Total number of messages routed to queues or streams",
                  max(0, stats.publish - unroutable))
    yield counter("unroutable_dropped_total",
                  "Total number of messages published as non-mandatory into an exchange and "
                  "dropped as unroutable", stats.drop_unroutable)
    yield counter("unroutable_returned_total",
                  "Total number of messages published as mandatory into an exchange and "
                  "returned to the publisher as unroutable", stats.return_unroutable)
    yield counter("confirmed_total",
                  "Total number of messages confirmed to publishers", stats.confirm)
    delivered = stats.deliver + stats.deliver_no_ack + stats.get + stats.get_no_ack
    yield counter("delivered_total", "Total number of messages delivered to consumers",
                  delivered, True)
    yield counter("delivered_consume_manual_ack_total",
                  "Total number of messages delivered to consumers using basic.consume with "
                  "manual acknowledgment", stats.deliver, True)
    yield counter("delivered_consume_auto_ack_total",
                  "Total number of messages delivered to consumers using basic.consume with "
                  "automatic acknowledgment", stats.deliver_no_ack, True)
    yield counter("delivered_get_manual_ack_total",
                  "Total number of messages delivered to consumers using basic.get with manual "
                  "acknowledgment", stats.get, True)
    yield counter("delivered_get_auto_ack_total",
                  "Total number of messages delivered to consumers using basic.get with "
                  "automatic acknowledgment", stats.get_no_ack, True)
    yield counter("get_empty_total",
                  "Total number of times basic.get operations fetched no message",
                  stats.get_empty, True)
    yield counter("redelivered_total",
                  "Total number of messages redelivered to consumers", stats.redeliver, True)
    yield counter("acknowledged_total",
                  "Total number of messages acknowledged by consumers", stats.ack, True)
    publishers = GaugeMetricFamily("rabbitmq_global_publishers", "Current number of publishers",
                                   labels=protocol)
    publishers.add_metric([PROTOCOL], sum(1 for c in connections if c.is_publisher))
    yield publishers
    # Dead-lettering: at_most_once = handed to the queue's dead-letter exchange, disabled =
    # the queue has none and the message was dropped.
    left: dict[str, int] = {}
    dead: dict[str, int] = {}
    for queue in queues:
        if queue.stat_left:
            for reason, count in queue.stat_left.items():
                left[reason] = left.get(reason, 0) + count
            for reason, count in queue.stat_dead_lettered.items():
                dead[reason] = dead.get(reason, 0) + count
    for reason in DEAD_LETTER_REASONS:
        family = CounterMetricFamily(
            f"rabbitmq_global_messages_dead_lettered_{reason}_total",
            f"Total number of messages dead-lettered due to {reason.replace('_', '-')}",
            labels=["queue_type", "dead_letter_strategy"])
        family.add_metric([QUEUE_TYPE, "at_most_once"], dead.get(reason, 0))
        family.add_metric([QUEUE_TYPE, "disabled"], left.get(reason, 0) - dead.get(reason, 0))
        yield family


# -- queues --------------------------------------------------------------------------------


def _queues(state: LiveState, selection: _Selection) -> list[Queue]:
    vhosts, pattern = selection.vhosts, selection.queue_pattern
    result: list[Queue] = []
    for vhost in list(state.broker.vhosts.values()):
        if vhosts is not None and vhost.name not in vhosts:
            continue
        if pattern is None:
            result.extend(vhost.queues.values())
        else:
            result.extend(q for q in vhost.queues.values() if pattern.search(q.name))
    return result


class _Emitter:
    """Builds a family per object (a :class:`ColumnFamily` over ``labels``) or, without
    labels, one series summed over the objects, so the per-family code is written once."""

    def __init__(self, prefix: str, labels: SeriesLabels | None):
        self.prefix, self.labels = prefix, labels

    def gauge(self, name: str, doc: str, values: Iterable[float]) -> Metric:
        return self._build("gauge", GaugeMetricFamily, name, doc, values)

    def counter(self, name: str, doc: str, values: Iterable[float]) -> Metric:
        return self._build("counter", CounterMetricFamily, name, doc, values)

    def _build(self, kind: str, summed: Callable[..., Metric], name: str, doc: str,
               values: Iterable[float]) -> Metric:
        if self.labels is not None:
            return ColumnFamily(kind, self.prefix + name, doc, self.labels, values)
        family = summed(self.prefix + name, doc, labels=[])
        family.add_metric([], sum(values))  # type: ignore[attr-defined]
        return family


def _queue_families(state: LiveState, queues: list[Queue], labels: SeriesLabels | None,
                    selection: _Selection) -> Iterator[Metric]:
    # One pass over the queues, a tuple per queue turned into a column per figure (this
    # runs on the event loop: 10,000 queues in a few ms).
    ready, consumers, paged, paged_bytes, ready_bytes = _columns(
        [(q.message_count, len(q.consumers), q.paged, q.paged_bytes,
          q.ready_bytes + q.paged_bytes) for q in queues], 5)
    unacked = unacked_by_queue(state)
    if unacked:
        unacked_counts, unacked_bytes = _columns(
            [unacked.get(q, (0, 0)) for q in queues], 2)
    else:  # nothing delivered and unacknowledged: the usual case of a broker at rest
        unacked_counts = unacked_bytes = [0] * len(queues)
    emit = _Emitter(selection.prefix, labels)
    families = selection.families
    if "queue_coarse_metrics" in families:
        yield emit.gauge("queue_messages_ready", "Messages ready to be delivered to consumers",
                         ready)
        yield emit.gauge("queue_messages_unacked",
                         "Messages delivered to consumers but not yet acknowledged",
                         unacked_counts)
        yield emit.gauge("queue_messages",
                         "Sum of ready and unacknowledged messages - total queue depth",
                         map(int.__add__, ready, unacked_counts))
    if "queue_metrics" in families or "queue_consumer_count" in families:
        yield emit.gauge("queue_consumers", "Consumers on a queue", consumers)
    if "queue_metrics" not in families:
        return
    yield emit.gauge("queue_messages_bytes", "Size in bytes of ready and unacknowledged messages",
                     map(int.__add__, ready_bytes, unacked_bytes))
    yield emit.gauge("queue_messages_ready_bytes", "Size in bytes of ready messages",
                     ready_bytes)
    yield emit.gauge("queue_messages_unacked_bytes",
                     "Size in bytes of all unacknowledged messages", unacked_bytes)
    yield emit.gauge("queue_messages_ready_ram", "Ready messages stored in memory",
                     map(int.__sub__, ready, paged))
    yield emit.gauge("queue_messages_paged_out", "Messages paged out to disk", paged)
    yield emit.gauge("queue_messages_paged_out_bytes",
                     "Size in bytes of messages paged out to disk", paged_bytes)


def _columns(rows: list[tuple[int, ...]], width: int) -> list[list[int]]:
    """Rows of ``width`` figures as ``width`` columns."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def oldest_ready(queue: Queue) -> float | None:
    """When the message at the head of the queue (the next one to be delivered; for a FIFO
    queue the oldest ready one) entered the queue, in coarse monotonic seconds; None when no
    ready message is in memory. Tombstones at the head are skipped (few: expiry compacts)."""
    for entry in queue.ready:
        if entry.state is READY:
            return entry.enqueued_at
    return None


def oldest_deliveries(state: LiveState) -> dict[Queue, float]:
    """When the oldest unacknowledged delivery of each queue was delivered (coarse monotonic
    seconds). A channel's unacked map is in delivery-tag order, which is delivery order, so
    only the first delivery of each queue in each channel is compared."""
    oldest: dict[Queue, float] = {}
    for connection in state.connections():
        for channel in list(connection.channels.values()):
            seen: set[Queue] = set()
            for delivery in channel.unacked.values():
                queue = delivery.queue
                if queue in seen:
                    continue
                seen.add(queue)
                delivered_at = delivery.entry.delivered_at
                if delivered_at and (queue not in oldest or delivered_at < oldest[queue]):
                    oldest[queue] = delivered_at
    return oldest


def _amqpd_queue_families(state: LiveState, queues: list[Queue],
                          labels: SeriesLabels | None) -> Iterator[Metric]:
    now = CLOCK.now
    redelivered, expired, lease_extensions = _columns(
        [(q.stat_redeliver, q.stat_left.get("expired", 0), q.stat_lease_extend)
         for q in queues], 3)
    ready_ages = [0.0 if since is None else max(0.0, now - since)
                  for since in map(oldest_ready, queues)]
    delivered = oldest_deliveries(state)
    unacked_ages = ([0.0 if since is None else max(0.0, now - since)
                     for since in map(delivered.get, queues)]
                    if delivered else [0.0] * len(queues))
    ages = (
        ("amqpd_queue_oldest_ready_seconds",
         "Age of the message at the head of the queue (0 when none is ready); aggregated: "
         "the oldest over all queues", ready_ages),
        ("amqpd_queue_oldest_unacked_seconds",
         "Age of the oldest delivery not yet acknowledged (0 when none); aggregated: the "
         "oldest over all queues", unacked_ages),
    )
    for name, doc, values in ages:
        if labels is not None:
            yield ColumnFamily("gauge", name, doc, labels, values)
        else:
            yield GaugeMetricFamily(name, doc, value=max(values, default=0.0))
    emit = _Emitter("amqpd_", labels)
    yield emit.counter("queue_messages_redelivered_total",
                       "Messages delivered again after a nack, reject or lost consumer",
                       redelivered)
    yield emit.counter("queue_messages_expired_total",
                       "Messages that expired (message TTL), dead-lettered or dropped", expired)
    yield emit.counter("queue_lease_extensions_total",
                       "Ack-deadline extensions published to amq.lease for deliveries of "
                       "the queue", lease_extensions)
    name = "amqpd_queue_messages_dead_lettered_total"
    doc = "Messages handed to the queue's dead-letter exchange, by reason"
    if labels is not None:
        rows = [((queue.vhost_name, queue.name, reason), count) for queue in queues
                if queue.stat_dead_lettered
                for reason, count in sorted(queue.stat_dead_lettered.items())]
        yield ColumnFamily("counter", name, doc,
                           SeriesLabels(("vhost", "queue", "reason"), [r for r, _ in rows]),
                           [count for _, count in rows])
        return
    totals = dict.fromkeys(DEAD_LETTER_REASONS, 0)
    for queue in queues:
        for reason, count in queue.stat_dead_lettered.items():
            totals[reason] = totals.get(reason, 0) + count
    dead = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, count in totals.items():
        dead.add_metric([reason], count)
    yield dead


def _amqpd_store_families(scrape: Scrape) -> Iterator[Metric]:
    broker = scrape.state.broker
    yield GaugeMetricFamily(
        "amqpd_queued_bytes",
        "Bytes of queued messages: what the memory alarm compares with "
        "rabbitmq_resident_memory_limit_bytes", value=broker.journal.queued_bytes)
    commits = scrape.commits
    if commits is None:
        return
    histogram = HistogramMetricFamily(
        "amqpd_store_commit_seconds",
        "Group commits of the store: from a batch leaving the journal until it is durable")
    histogram.add_metric([], commits.cumulative(), commits.total_seconds)
    yield histogram
    yield CounterMetricFamily(
        "amqpd_store_fsyncs_total",
        "fsyncs the group commits waited for (one per store commit, one per stream synced)",
        value=commits.fsyncs)


def _amqpd_stream_families(queues: list[Queue]) -> Iterator[Metric]:
    """Consumer groups of streams, one series per group on every endpoint: a group falling
    behind is what an operator alerts on, and groups are few (not one per message)."""
    rows = group_rows(queues)
    labels = ["vhost", "queue", "group"]
    lag = GaugeMetricFamily(
        "amqpd_stream_group_lag_messages",
        "Messages of the stream after the group's committed offset", labels=labels)
    committed = GaugeMetricFamily(
        "amqpd_stream_group_committed_offset",
        "The offset after the group's highest contiguously acknowledged message",
        labels=labels)
    for row in rows:
        key = [str(row["vhost"]), str(row["queue"]), str(row["group"])]
        lag.add_metric(key, float(row["lag"]))
        committed.add_metric(key, float(row["committed_offset"]))
    yield lag
    yield committed


# -- sessions and cluster-wide -------------------------------------------------------------


def _session_families(state: LiveState, selection: _Selection) -> Iterator[Metric]:
    listener = state.listeners[0] if state.listeners else None
    connections = state.open_connections()
    names = [connection_name(c, listener) for c in connections]
    per_object = selection.per_object
    if "connection_metrics" in selection.families:
        emit = _Emitter(selection.prefix,
                        SeriesLabels(("channel",), [(n,) for n in names]) if per_object else None)
        yield emit.gauge("connection_channels", "Channels on a connection",
                         [len(c.channels) for c in connections])
    if "channel_metrics" not in selection.families:
        return
    channels = [(f"{name} ({number})", channel)
                for name, connection in zip(names, connections, strict=True)
                for number, channel in sorted(connection.channels.items())]
    emit = _Emitter(selection.prefix,
                    SeriesLabels(("channel",), [(label,) for label, _ in channels])
                    if per_object else None)
    yield emit.gauge("channel_consumers", "Consumers on a channel",
                     [len(ch.consumers) for _, ch in channels])
    yield emit.gauge("channel_messages_unacked", "Delivered but not yet acknowledged messages",
                     [len(ch.unacked) for _, ch in channels])
    yield emit.gauge("channel_prefetch", "Deprecated and will be removed in a future version",
                     [ch.global_prefetch_count for _, ch in channels])
    yield emit.gauge("consumer_prefetch", "Limit of unacknowledged messages for each consumer",
                     [ch.prefetch_count for _, ch in channels])


def _cluster_families(state: LiveState, selection: _Selection) -> Iterator[Metric]:
    vhosts = [v for v in state.broker.vhosts.values()
              if selection.vhosts is None or v.name in selection.vhosts]
    families = selection.families
    if "vhost_status" in families:
        yield ColumnFamily("gauge", "rabbitmq_cluster_vhost_status",
                           "Whether a given vhost is running",
                           SeriesLabels(("vhost",), [(v.name,) for v in vhosts]),
                           [1] * len(vhosts))
    if not families & {"exchange_bindings", "exchange_names"}:
        return
    pairs = [(vhost.name, exchange) for vhost in vhosts for exchange in vhost.exchanges.values()]
    exchanges = [exchange for _, exchange in pairs]
    labels = SeriesLabels(("vhost", "exchange", "type"),
                          [(name, e.name, e.type_name) for name, e in pairs])
    if "exchange_bindings" in families:
        yield ColumnFamily(
            "gauge", "rabbitmq_cluster_exchange_bindings",
            "Number of bindings for an exchange. This value is cluster-wide.", labels,
            [0 if e.kind is None else sum(1 for _ in e.kind.bindings()) for e in exchanges])
    if "exchange_names" in families:
        yield ColumnFamily(
            "gauge", "rabbitmq_cluster_exchange_name",
            "Enumerates exchanges without any additional info. This value is cluster-wide.",
            labels, [1] * len(exchanges))
