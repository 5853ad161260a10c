"""What the web dashboard reads beyond RabbitMQ's API (``/api/dashboard/...``).

RabbitMQ's UI gets slow with thousands of queues because it renders every queue's full
statistics on every refresh. Here the queue listing sorts and filters on one small key per
queue and renders the full JSON only for the page asked for; the overview's top-N lists
use the same keys. Nothing is stored for the dashboard: queue figures are read live, and
history comes from the rate sampler's fixed-size rings (one minute), so the charts have
data the moment a page opens.

Figures RabbitMQ does not have, each defined once here (the UI repeats the definitions):

- ``messages_ready_growth``: change of the ready count per second over the last sample
  interval (positive = the queue is filling up).
- ``oldest_message_age``: seconds the message at the head of the queue (the next to be
  delivered) has been in it, from the broker's own enqueue stamp (``QueueEntry.enqueued_at``,
  good to the 0.1 s tick; a message read back from disk counts from then), whatever the
  publisher sent; None when no ready message is in memory.
- ``prefetch_saturation``: unacked messages held by the queue's consumers divided by the
  sum of their prefetch limits (1.0 = every consumer's window is full, so consumers --
  not the broker -- are the bottleneck); None when no consumer has a limit.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

from amqpd.admin.auth import sees_all_vhosts
from amqpd.admin.context import Call, Reply
from amqpd.admin.errors import bad_request
from amqpd.admin.paging import listing
from amqpd.admin.rates import DEPTH, SAMPLE_INTERVAL, Rates
from amqpd.admin.readmodel import (
    LiveState,
    binding_json,
    channel_json,
    connection_json,
    connection_name,
    queue_json,
    sessions,
    unacked_by_queue,
)
from amqpd.admin.routes import Route, route
from amqpd.broker.message import QueueEntry
from amqpd.broker.queue import Queue
from amqpd.session.connection import Connection

#: How many entries of the ready list are skipped at most to find the head (tombstones of
#: messages already gone wait there until the queue compacts).
_HEAD_SCAN = 64
TOP_N = 5
#: Broker-wide rate series of the overview chart: name -> counters summed.
RATE_SERIES: dict[str, tuple[str, ...]] = {
    "published": ("publish",),
    "confirmed": ("confirm",),
    "delivered": ("deliver", "deliver_no_ack", "get", "get_no_ack"),
    "acked": ("ack",),
    "redelivered": ("redeliver",),
    "unroutable": ("return_unroutable", "drop_unroutable"),
}

Unacked = dict[Queue, tuple[int, int]]


# -- per-queue figures ---------------------------------------------------------------------


def oldest_message_age(queue: Queue, now: float) -> float | None:
    """Seconds the head message has waited, at monotonic time ``now`` (module doc)."""
    for entry in itertools.islice(queue.ready, _HEAD_SCAN):
        if entry.state is QueueEntry.READY:
            return max(0.0, round(now - entry.enqueued_at, 1))
    return None


def ready_growth(rates: Rates | None, queue: Queue) -> float:
    """Change of the ready count per second, against the newest sample at least
    MIN_SPAN old (the same base a rate uses); 0.0 before there is one."""
    if rates is None:
        return 0.0
    return rates.queue_depth_rates(queue, 0)[DEPTH]


def prefetch_window(queue: Queue) -> tuple[int, int]:
    """(unacked held, sum of prefetch limits) over the queue's consumers that have a limit:
    their own prefetch, else their channel's global one; no-ack consumers have none."""
    used = limit = 0
    for consumer in queue.consumers:
        if getattr(consumer, "no_ack", False):
            continue
        own = int(getattr(consumer, "prefetch_count", 0) or 0)
        if own:
            used += min(int(getattr(consumer, "unacked", 0)), own)
            limit += own
            continue
        channel = getattr(consumer, "channel", None)
        shared = int(getattr(channel, "global_prefetch_count", 0) or 0)
        if shared:
            # A channel-wide window: count its share once per consumer on the channel.
            used += min(int(getattr(consumer, "unacked", 0)), shared)
            limit += shared
    return used, limit


def prefetch_saturation(queue: Queue) -> float | None:
    """Used share of the consumers' prefetch windows (see the module doc)."""
    used, limit = prefetch_window(queue)
    return round(used / limit, 3) if limit else None


def queue_item(state: LiveState, queue: Queue, unacked: Unacked, now: float) -> dict[str, Any]:
    """The API's queue JSON plus the dashboard's figures."""
    item = queue_json(state, queue, unacked)
    used, limit = prefetch_window(queue)
    item["messages_ready_growth"] = ready_growth(state.rates, queue)
    item["oldest_message_age"] = oldest_message_age(queue, now)
    item["prefetch_used"] = used
    item["prefetch_limit"] = limit
    item["prefetch_saturation"] = round(used / limit, 3) if limit else None
    return item


# -- sorting on one key per queue ----------------------------------------------------------

KeyFunction = Callable[[LiveState, Queue, Unacked, float], Any]


def _rate(name: str) -> KeyFunction:
    def key(state: LiveState, queue: Queue, unacked: Unacked, now: float) -> float:
        if state.rates is None:
            return 0.0
        return state.rates.queue_rates(queue)[1].get(name, 0.0)
    return key


def _capacity(state: LiveState, queue: Queue, unacked: Unacked, now: float) -> float:
    # The API's consumer_capacity, without rendering the whole queue.
    consumers = list(queue.consumers)
    return sum(1 for c in consumers if c.has_credit()) / len(consumers) if consumers else 0.0


#: The sort columns of the queue listing (the API's names) and how to read each cheaply.
SORT_KEYS: dict[str, KeyFunction] = {
    "name": lambda s, q, u, n: q.name,
    "vhost": lambda s, q, u, n: q.vhost_name,
    "type": lambda s, q, u, n: str(q.arguments.get("x-queue-type", "classic")),
    "messages_ready": lambda s, q, u, n: q.message_count,
    "messages_unacknowledged": lambda s, q, u, n: u.get(q, (0, 0))[0],
    "messages": lambda s, q, u, n: q.message_count + u.get(q, (0, 0))[0],
    "consumers": lambda s, q, u, n: len(q.consumers),
    "consumer_capacity": _capacity,
    "prefetch_saturation": lambda s, q, u, n: prefetch_saturation(q),
    "messages_ready_growth": lambda s, q, u, n: ready_growth(s.rates, q),
    "oldest_message_age": lambda s, q, u, n: oldest_message_age(q, n),
    "message_stats.publish_details.rate": _rate("publish"),
    "message_stats.deliver_get_details.rate": _rate("deliver_get"),
    "message_stats.ack_details.rate": _rate("ack"),
    "message_stats.redeliver_details.rate": _rate("redeliver"),
}


def _queues(call: Call) -> list[Queue]:
    return [queue for vhost in call.vhosts() for _, queue in sorted(vhost.queues.items())]


def list_queues(call: Call) -> Reply:
    """GET /api/dashboard/queues[/{vhost}]: always paged (``page`` defaults to 1), with the
    API's ``sort``, ``sort_reverse``, ``page_size``, ``name`` and ``use_regex``; sortable
    by any column of :data:`SORT_KEYS`."""
    state = call.state
    queues = _queues(call)
    unacked = unacked_by_queue(state)
    now = time.monotonic()
    sort = call.query.get("sort", "")
    key = SORT_KEYS.get(sort) if sort else None
    if sort and key is None:
        raise bad_request(f"cannot sort queues by '{sort}'; one of {', '.join(SORT_KEYS)}")
    rows = [{"name": queue.name, "index": index,
             "key": key(state, queue, unacked, now) if key is not None else index}
            for index, queue in enumerate(queues)]
    query = {name: value for name, value in call.query.items() if name != "columns"}
    query["sort"] = "key"
    query.setdefault("page", "1")
    envelope = listing(rows, query)
    envelope["items"] = [queue_item(state, queues[row["index"]], unacked, now)
                         for row in envelope["items"]]
    return Reply(body=envelope)


def _top(state: LiveState, queues: list[Queue], unacked: Unacked, now: float,
         column: str) -> list[dict[str, Any]]:
    key = SORT_KEYS[column]
    scored = [(value, queue) for queue in queues
              if (value := key(state, queue, unacked, now)) is not None and value > 0]
    best = heapq.nlargest(TOP_N, scored, key=lambda pair: pair[0])
    return [{"vhost": queue.vhost_name, "name": queue.name, "value": value}
            for value, queue in best]


# -- one queue -----------------------------------------------------------------------------


def _consumer_item(state: LiveState, consumer: Any) -> dict[str, Any]:
    channel = consumer.channel
    connection = channel.connection
    client = connection.client_properties
    listener = state.listeners[0] if state.listeners else None
    return {
        "consumer_tag": consumer.tag,
        "channel": f"{connection_name(connection, listener)} ({channel.id})",
        "client": _client_name(client),
        "user": connection.user_name,
        "ack_required": not consumer.no_ack,
        "prefetch_count": consumer.prefetch_count,
        "global_prefetch_count": channel.global_prefetch_count,
        "unacked": consumer.unacked,
        "priority": (consumer.arguments or {}).get("x-priority", 0),
        "exclusive": consumer.exclusive,
        "can_take": consumer.has_credit(),
    }


def get_queue(call: Call) -> Reply:
    """GET /api/dashboard/queues/{vhost}/{name}: the queue with the dashboard's figures,
    its consumers, its bindings and its sample history."""
    state = call.state
    queue = call.queue()
    item = queue_item(state, queue, unacked_by_queue(state), time.monotonic())
    item["consumer_details"] = [_consumer_item(state, c) for c in queue.consumers]
    vhost = call.vhost()
    bindings = [binding_json(vhost.name, "", queue.name, "queue", queue.name, {})]
    for exchange_name in sorted(vhost.exchanges):
        kind = vhost.exchanges[exchange_name].kind
        if exchange_name == "" or kind is None:
            continue
        bindings.extend(binding_json(vhost.name, exchange_name, queue.name, "queue",
                                     b.routing_key, b.arguments)
                        for b in kind.bindings() if b.destination is queue)
    item["bindings"] = bindings
    item["history"] = _queue_history(state.rates, queue)
    return Reply(body=item)


def _queue_history(rates: Rates | None, queue: Queue) -> dict[str, list[Any]]:
    ring = list(rates.queue_rings.get(queue, ())) if rates is not None else []
    series = ("publish", "deliver_get", "ack")
    return _history(ring, {name: (name,) for name in series},
                    rates.clock() if rates is not None else time.monotonic())


# -- overview ------------------------------------------------------------------------------


def _history(ring: list[tuple[float, Any]], series: dict[str, tuple[str, ...]],
             clock_now: float) -> dict[str, list[Any]]:
    """Per-interval rates between consecutive samples, stamped with the wall-clock time of
    the later one, plus the ready depth at each sample."""
    offset = time.time() - clock_now
    result: dict[str, list[Any]] = {"time": [], DEPTH: [], **{name: [] for name in series}}
    for (t0, before), (t1, after) in itertools.pairwise(ring):
        span = t1 - t0
        if span <= 0:
            continue
        result["time"].append(round(t1 + offset, 3))
        result[DEPTH].append(after.get(DEPTH))
        for name, counters in series.items():
            delta = sum(after.get(c, 0) - before.get(c, 0) for c in counters)
            result[name].append(round(max(0, delta) / span, 1))
    return result


def _client_name(properties: dict[str, object]) -> str:
    """What the client called itself: ``connection_name``, else product and version."""
    name = properties.get("connection_name")
    if name:
        return str(name.decode() if isinstance(name, bytes) else name)
    parts = [properties.get("product"), properties.get("version")]
    return " ".join(str(p.decode() if isinstance(p, bytes) else p) for p in parts if p)


def _visible_connections(state: LiveState, call: Call) -> list[Connection]:
    """Monitoring users see every connection, others their own (as the API)."""
    connections = state.open_connections()
    if sees_all_vhosts(call.user):
        return connections
    return [c for c in connections if c.user_name == call.user.name]


def _blocked(state: LiveState, call: Call, alarms: bool) -> list[dict[str, Any]]:
    """Publishing connections the broker is not reading from now: every publisher while
    an alarm is raised, and those held back by per-queue flow control."""
    result = []
    for connection in _visible_connections(state, call):
        reason = "alarm" if alarms and connection.is_publisher else \
            "flow" if connection.flow_blocked() else None
        if reason is None:
            continue
        item = connection_json(state, connection)
        result.append({"name": item["name"], "user": item["user"], "vhost": item["vhost"],
                       "client": _client_name(connection.client_properties),
                       "reason": reason, "notified": connection.blocked_sent})
    return result


def _alarms(state: LiveState) -> dict[str, Any]:
    broker = state.broker
    return {
        "memory": broker.memory_alarm,
        "memory_used": broker.journal.queued_bytes,
        "memory_limit": broker.memory_limit,
        "disk": broker.disk_alarm,
        "disk_free": broker.disk_free,
        "disk_free_limit": broker.disk_free_limit,
    }


def alarms(call: Call) -> Reply:
    """GET /api/dashboard/alarms: what the banner on every page shows."""
    state = call.state
    return Reply(body={"alarms": _alarms(state),
                       "blocked": _blocked(state, call, bool(state.broker.alarms))})


def list_channels(call: Call) -> Reply:
    """GET /api/dashboard/channels: the API's channels plus the client's name and the
    used share of the channel's prefetch windows, paged like the queues."""
    state = call.state
    visible = set(_visible_connections(state, call))
    items = []
    for connection, channel in sessions(state):
        if connection not in visible:
            continue
        item = channel_json(state, connection, channel)
        item["client"] = _client_name(connection.client_properties)
        limit = sum(consumer.prefetch_count for consumer in channel.consumers.values()
                    if not consumer.no_ack)
        limit = limit or channel.global_prefetch_count
        item["prefetch_saturation"] = (
            round(min(1.0, len(channel.unacked) / limit), 3) if limit else None)
        items.append(item)
    query = dict(call.query)
    query.setdefault("page", "1")
    return Reply(body=listing(items, query))


def overview(call: Call) -> Reply:
    """GET /api/dashboard/overview: alarms, blocked publishers, top-N queues and the
    last minute of broker-wide rates."""
    state = call.state
    broker = state.broker
    queues = _queues(call)
    unacked = unacked_by_queue(state)
    now = time.monotonic()
    rates = state.rates
    history = _history(list(rates.global_ring), RATE_SERIES, rates.clock()) \
        if rates is not None else _history([], RATE_SERIES, 0.0)
    return Reply(body={
        "sample_interval": SAMPLE_INTERVAL,
        "alarms": _alarms(state),
        "blocked": _blocked(state, call, bool(broker.alarms)),
        "history": history,
        "top": {
            "messages": _top(state, queues, unacked, now, "messages"),
            "messages_ready_growth": _top(state, queues, unacked, now,
                                          "messages_ready_growth"),
            "oldest_message_age": _top(state, queues, unacked, now, "oldest_message_age"),
            "messages_unacknowledged": _top(state, queues, unacked, now,
                                            "messages_unacknowledged"),
        },
    })


ROUTES: list[Route] = [
    route("GET", "api/dashboard/overview", overview),
    route("GET", "api/dashboard/alarms", alarms),
    route("GET", "api/dashboard/channels", list_channels),
    route("GET", "api/dashboard/queues", list_queues),
    route("GET", "api/dashboard/queues/{vhost}", list_queues),
    route("GET", "api/dashboard/queues/{vhost}/{name}", get_queue),
]
