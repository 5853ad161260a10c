"""The scenarios of ``interop/bench.py``: each returns one dict of measurements.

Every scenario works on freshly declared, uniquely named queues/exchanges that
`Ctx.cleanup` deletes afterwards, and bounds every wait: the caller adds a hard
per-scenario cap on top (SIGALRM).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import resource
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from interop import loadgen
except ImportError:  # run as a script: interop/ itself is on sys.path
    import loadgen  # type: ignore[no-redef]

AmqpUrl = loadgen.AmqpUrl
Connection = loadgen.Connection
Consumer = loadgen.Consumer
Fleet = loadgen.Fleet
PacedPublisher = loadgen.PacedPublisher
Publisher = loadgen.Publisher
Worker = loadgen.Worker

BODY_SIZE = 256
BODY = bytes(range(256)) * (BODY_SIZE // 256)
PREFETCH = 100
CONFIRM_WINDOW = 1000
TOPIC_BINDINGS = 10_000
TOPIC_QUEUES = 4
FANOUT_QUEUES = 10


@dataclass
class Options:
    duration: float = 3.0
    publishers: int = 1
    prefill: int = 200_000
    backlog: int = 1_000_000
    connections: int = 1000
    cap: float = 60.0


# ------------------------------------------------------------------ broker probes


def rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime+stime of a process (all threads), from /proc/PID/stat."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # skip "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes spent busy (every core), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def listening_pid(port: int) -> int | None:
    """PID of the local process listening on TCP `port` (needs /proc access)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


@dataclass
class Timed:
    """A timed phase: start time, worker results and CPU accounting."""

    t0: float
    results: list[dict[str, Any]]
    broker_pid: int | None
    parent_cpu0: float
    broker_cpu0: float | None
    machine_cpu0: float = field(default_factory=machine_busy_seconds)

    def count(self, name: str | None = None) -> int:
        return sum(int(r["count"]) for r in self.results if name is None or r["name"] == name)

    def end(self, name: str | None = None) -> float:
        return max(float(r["end"]) for r in self.results if name is None or r["name"] == name)

    def cpu_fields(self) -> dict[str, Any]:
        """Generator CPU (workers + this process) and broker CPU, in cores.

        Shares are over the wall time from the start until now, which can be
        longer than the headline's `seconds` (e.g. the latency consumer's tail).
        """
        seconds = max(time.monotonic() - self.t0, 1e-6)
        parent = loadgen.cpu_seconds() - self.parent_cpu0
        per_proc = {f"{r['name']}#{i}": r["cpu"] / seconds for i, r in enumerate(self.results)}
        per_proc["main"] = parent / seconds
        fields: dict[str, Any] = {
            "generator_cpu_share": round(sum(per_proc.values()), 3),
            "generator_cpu_per_process": {k: round(v, 3) for k, v in per_proc.items()},
        }
        machine = (machine_busy_seconds() - self.machine_cpu0) / seconds
        broker_cpu = proc_cpu_seconds(self.broker_pid)
        if broker_cpu is not None and self.broker_cpu0 is not None:
            broker = (broker_cpu - self.broker_cpu0) / seconds
            fields["broker_cpu_share"] = round(broker, 3)
            # Whatever else ran on the machine meanwhile: a noisy neighbour
            # shows up here rather than as a mysteriously slow broker.
            fields["other_cpu_share"] = round(
                max(0.0, machine - broker - fields["generator_cpu_share"]), 3
            )
        return fields


# ----------------------------------------------------------------------- context


@dataclass
class Ctx:
    url: AmqpUrl
    opts: Options
    broker_pid: int | None
    scenario: str = ""
    queues: list[str] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)
    fleets: list[Fleet] = field(default_factory=list)
    # Measurements taken so far: kept in the record if a later step fails.
    partial: dict[str, Any] = field(default_factory=dict)
    _control: Connection | None = None

    @property
    def control(self) -> Connection:
        if self._control is None:
            self._control = Connection(self.url)
        return self._control

    def name(self, kind: str) -> str:
        return f"bench.{self.scenario}.{kind}.{uuid.uuid4().hex[:10]}"

    def new_queue(self, durable: bool = False) -> str:
        queue = self.name("q")
        self.queues.append(queue)
        self.control.queue_declare(queue, durable=durable)
        return queue

    def new_exchange(self, exchange_type: str) -> str:
        exchange = self.name("x")
        self.exchanges.append(exchange)
        self.control.exchange_declare(exchange, exchange_type)
        return exchange

    def timed(self, workers: list[Worker], timeout: float | None = None) -> Timed:
        """Run `workers` together; returns once every one has reported."""
        fleet = Fleet(workers, self.opts.cap)
        self.fleets.append(fleet)
        t0 = fleet.start()
        timed = Timed(
            t0, [], self.broker_pid, loadgen.cpu_seconds(), proc_cpu_seconds(self.broker_pid)
        )
        timed.results = fleet.collect(timeout=timeout or self.opts.cap)
        fleet.stop()
        return timed

    def wait_count(self, queue: str, expected: int, timeout: float | None = None) -> float:
        """Poll until `queue` holds `expected` messages; return when it did.

        The default timeout is the scenario cap: an unconfirmed publisher can
        leave many seconds of work in socket buffers, and that tail is part of
        the measurement.
        """
        deadline = time.monotonic() + (timeout or self.opts.cap)
        delay = 0.0005
        while True:
            count = self.control.message_count(queue)
            now = time.monotonic()
            if count >= expected:
                return now
            if now > deadline:
                raise TimeoutError(f"{queue} holds {count} of {expected} messages")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def fill(self, queue: str, count: int) -> float:
        """Put `count` transient messages into `queue`; return msgs/s (untimed set-up)."""
        procs = max(1, self.opts.publishers)
        shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        workers: list[Worker] = [
            Publisher(self.url, "", [queue], BODY, duration=self.opts.cap, limit=share, batch=200)
            for share in shares
            if share
        ]
        timed = self.timed(workers)
        done = self.wait_count(queue, count)
        return count / (done - timed.t0)

    def cleanup(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        try:
            if self._control is not None:
                self._control.close(timeout=1.0)
            # A fresh connection: the old one may have been closed by an error.
            conn = Connection(self.url, timeout=10.0)
            for queue in self.queues:
                conn.queue_delete(queue)
            for exchange in self.exchanges:
                conn.exchange_delete(exchange)
            conn.close()
        finally:
            self._control = None
            self.queues.clear()
            self.exchanges.clear()
            self.fleets.clear()


def rate_fields(messages: int, seconds: float, key: str = "msgs_per_s") -> dict[str, Any]:
    if messages <= 0 or seconds <= 0:
        raise RuntimeError(
            f"no messages got through in the timed phase ({messages} in {seconds:.3f}s)"
        )
    return {key: round(messages / seconds, 1), "messages": messages, "seconds": round(seconds, 3)}


# --------------------------------------------------------------------- scenarios


def publish(ctx: Ctx) -> dict[str, Any]:
    """Transient publishes, no confirms; done when the queue holds them all."""
    queue = ctx.new_queue()
    workers: list[Worker] = [
        Publisher(ctx.url, "", [queue], BODY, duration=ctx.opts.duration, batch=200)
        for _ in range(ctx.opts.publishers)
    ]
    timed = ctx.timed(workers)
    sent = timed.count()
    done = ctx.wait_count(queue, sent)
    seconds = done - timed.t0
    return {**rate_fields(sent, seconds), "publishers": len(workers), **timed.cpu_fields()}


def _confirmed(ctx: Ctx, durable: bool) -> dict[str, Any]:
    queue = ctx.new_queue(durable=durable)
    worker = Publisher(
        ctx.url,
        "",
        [queue],
        BODY,
        duration=ctx.opts.duration,
        window=CONFIRM_WINDOW,
        persistent=durable,
    )
    timed = ctx.timed([worker])
    seconds = timed.end() - timed.t0
    nacked = sum(int(r.get("nacked", 0)) for r in timed.results)
    return {
        **rate_fields(timed.count(), seconds),
        "window": CONFIRM_WINDOW,
        "nacked": nacked,
        **timed.cpu_fields(),
    }


def publish_confirm(ctx: Ctx) -> dict[str, Any]:
    """Transient publishes in confirm mode, 1,000 unconfirmed at most."""
    return _confirmed(ctx, durable=False)


def persistent(ctx: Ctx) -> dict[str, Any]:
    """delivery_mode=2 into a durable queue, confirms (window 1,000)."""
    return _confirmed(ctx, durable=True)


def consume(ctx: Ctx) -> dict[str, Any]:
    """Drain a pre-filled queue: prefetch 100, one ack per message (pipelined)."""
    queue = ctx.new_queue()
    fill_rate = ctx.fill(queue, ctx.opts.prefill)
    ctx.partial["prefill_msgs_per_s"] = round(fill_rate, 1)
    worker = Consumer(
        ctx.url, [queue], PREFETCH, duration=ctx.opts.duration, expect=ctx.opts.prefill
    )
    timed = ctx.timed([worker])
    seconds = timed.end() - timed.t0
    return {
        **rate_fields(timed.count(), seconds),
        "prefill": ctx.opts.prefill,
        "prefill_msgs_per_s": round(fill_rate, 1),
        "prefetch": PREFETCH,
        "acks": "single, pipelined per read",
        **timed.cpu_fields(),
    }


def e2e(ctx: Ctx) -> dict[str, Any]:
    """Producer and consumer at once on one queue; rate counted at the consumer."""
    queue = ctx.new_queue()
    duration = ctx.opts.duration
    workers: list[Worker] = [
        Consumer(ctx.url, [queue], PREFETCH, duration=duration, name="consumer"),
        *(
            Publisher(ctx.url, "", [queue], BODY, duration=duration, batch=200)
            for _ in range(ctx.opts.publishers)
        ),
    ]
    timed = ctx.timed(workers)
    consumed = timed.count("consumer")
    return {
        **rate_fields(consumed, duration),
        "published_per_s": round(timed.count("publisher") / duration, 1),
        "prefetch": PREFETCH,
        **timed.cpu_fields(),
    }


def percentile(ordered: list[int], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index] / 1e6


def fanout(ctx: Ctx) -> dict[str, Any]:
    """Fanout exchange to 10 queues, one consumer each; deliveries/s."""
    exchange = ctx.new_exchange("fanout")
    queues = [ctx.new_queue() for _ in range(FANOUT_QUEUES)]
    ctx.control.bind_many([(q, exchange, "") for q in queues])
    duration = ctx.opts.duration
    half = FANOUT_QUEUES // 2  # two consumer processes, five connections each
    workers: list[Worker] = [
        Consumer(ctx.url, queues[:half], PREFETCH, duration=duration, name="consumer"),
        Consumer(ctx.url, queues[half:], PREFETCH, duration=duration, name="consumer"),
        Publisher(ctx.url, exchange, [""], BODY, duration=duration, batch=100),
    ]
    timed = ctx.timed(workers)
    return {
        **rate_fields(timed.count("consumer"), duration, "deliveries_per_s"),
        "published_per_s": round(timed.count("publisher") / duration, 1),
        "queues": FANOUT_QUEUES,
        **timed.cpu_fields(),
    }


def topic_patterns(count: int, rng: random.Random) -> list[str]:
    """Distinct patterns of 2-4 words over a 1,000-word vocabulary.

    About one word in five is "*", and one pattern in ten ends in ".#" (a
    "#" inside a pattern makes RabbitMQ's trie backtrack and would dominate
    the result).  Each has a literal word, so keys built from another
    vocabulary never match anything and the match ratio stays under control.
    """
    words = [f"w{i:03d}" for i in range(1000)]
    patterns: set[str] = set()
    while len(patterns) < count:
        parts = [rng.choice(words) if rng.random() < 0.8 else "*" for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.1:
            parts[-1] = "#"
        if any(p not in ("*", "#") for p in parts):
            patterns.add(".".join(parts))
    return sorted(patterns)


def topic_keys(patterns: list[str], count: int, rng: random.Random) -> list[str]:
    """Half the keys instantiate a bound pattern (match), half match nothing."""
    keys = []
    for i in range(count):
        if i % 2:
            keys.append(".".join(f"x{rng.randrange(1000):03d}" for _ in range(3)))
            continue
        parts = []
        for part in rng.choice(patterns).split("."):
            if part == "*":
                parts.append(f"w{rng.randrange(1000):03d}")
            elif part == "#":
                parts.extend(f"w{rng.randrange(1000):03d}" for _ in range(rng.randint(0, 2)))
            else:
                parts.append(part)
        keys.append(".".join(parts) or "w000")
    return keys


def topic(ctx: Ctx) -> dict[str, Any]:
    """Topic exchange, 10,000 bindings on 4 queues; done when a final marker is routed."""
    rng = random.Random(42)
    exchange = ctx.new_exchange("topic")
    queues = [ctx.new_queue() for _ in range(TOPIC_QUEUES)]
    marker = ctx.new_queue()
    patterns = topic_patterns(TOPIC_BINDINGS, rng)
    bindings = [(queues[i % TOPIC_QUEUES], exchange, p) for i, p in enumerate(patterns)]
    bindings.append((marker, exchange, "zz.marker"))
    ctx.partial["phase"] = "bind"
    ctx.control.bind_many(bindings)
    ctx.partial["phase"] = "publish"
    keys = topic_keys(patterns, 1000, rng)
    workers: list[Worker] = [
        Publisher(
            ctx.url,
            exchange,
            keys,
            BODY,
            duration=ctx.opts.duration,
            final=loadgen.encode_publish(exchange, "zz.marker", b"end"),
        )
        for _ in range(ctx.opts.publishers)
    ]
    timed = ctx.timed(workers)
    ctx.partial.update(phase="wait for marker", published=timed.count())
    # A channel routes in order, so each publisher's marker arriving means
    # everything it published before has been routed.
    done = ctx.wait_count(marker, len(workers))
    seconds = done - timed.t0
    routed = sum(ctx.control.message_count(q) for q in queues)
    return {
        **rate_fields(timed.count(), seconds),
        "bindings": len(patterns),
        "distinct_keys": len(keys),
        "queued_copies": routed,
        **timed.cpu_fields(),
    }


def _open_idle(url: AmqpUrl, count: int) -> tuple[list[Connection], list[str], float]:
    """Open up to `count` connections, 16 handshakes in flight.

    Returns the connections, the errors and the seconds until the last
    successful handshake (so a broker that refuses connections past its fd
    limit is not charged our handshake timeouts).  Stops after 5 failures.
    """
    opened: list[Connection] = []
    errors: list[str] = []
    last_ok = start = time.monotonic()

    def one(_: int) -> None:
        nonlocal last_ok
        if len(errors) >= 5:
            return
        try:
            opened.append(Connection(url, timeout=3.0, open_channel=False))
            last_ok = time.monotonic()
        except (OSError, loadgen.AmqpError) as exc:
            errors.append(repr(exc))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return opened, errors, last_ok - start


@dataclass
class RssBaseline:
    """Broker RSS before a memory measurement, and the drift it was on.

    Memory freed by earlier runs (deleted queues, GC) goes back to the OS
    lazily: RabbitMQ's RSS can keep falling by several MB/s for minutes.  We
    wait for RSS to go flat; if it does not, the drift measured over the last
    few seconds is extrapolated (for at most MAX_EXTRAPOLATION seconds) so the
    delta is not swamped by it.
    """

    pid: int | None
    rss: int | None = None
    slope: float = 0.0  # bytes per second
    at: float = 0.0

    MAX_EXTRAPOLATION = 15.0

    def take(self, timeout: float = 20.0, window: int = 3, flat: int = 2**18) -> RssBaseline:
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout
        while (rss := rss_bytes(self.pid)) is not None:
            samples.append((time.monotonic(), rss))
            recent = samples[-(window + 1) :]
            if len(recent) == window + 1:
                steps = [abs(b[1] - a[1]) for a, b in itertools.pairwise(recent)]
                if max(steps) < flat or time.monotonic() > deadline:
                    (t0, r0), (t1, r1) = recent[0], recent[-1]
                    self.slope = 0.0 if max(steps) < flat else (r1 - r0) / (t1 - t0)
                    break
            time.sleep(1.0)
        self.at, self.rss = time.monotonic(), rss_bytes(self.pid)
        return self

    def delta(self) -> int | None:
        """RSS growth since the baseline, net of the extrapolated drift."""
        now = rss_bytes(self.pid)
        if now is None or self.rss is None:
            return None
        drift = self.slope * min(time.monotonic() - self.at, self.MAX_EXTRAPOLATION)
        return int(now - (self.rss + drift))

    def fields(self) -> dict[str, Any]:
        return {"rss_drift_kb_per_s": round(self.slope / 1024, 1)} if self.slope else {}


def idle_connections(ctx: Ctx) -> dict[str, Any]:
    """1,000 idle connections: connect rate and broker RSS per connection."""
    count = ctx.opts.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    baseline = RssBaseline(ctx.broker_pid).take()
    cpu0 = loadgen.cpu_seconds()
    opened, errors, seconds = _open_idle(ctx.url, count)
    cpu = loadgen.cpu_seconds() - cpu0
    try:
        time.sleep(2.0)  # let the broker finish per-connection set-up
        grown = baseline.delta()
        rss1 = rss_bytes(ctx.broker_pid)
    finally:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda c: c.close(timeout=2.0), opened))
    result: dict[str, Any] = {
        "connect_per_s": round(len(opened) / max(seconds, 1e-6), 1),
        "connections": len(opened),
        "requested": count,
        "seconds": round(seconds, 3),
        "generator_cpu_share": round(cpu / max(seconds, 1e-6), 3),
    }
    if errors:
        result["failed"] = errors[:3]
    if grown is not None and rss1 is not None and opened:
        result["rss_kb_per_conn"] = round(grown / len(opened) / 1024, 1)
        result["broker_rss_mb"] = round(rss1 / 2**20, 1)
        result.update(baseline.fields())
    return result


def backlog(ctx: Ctx) -> dict[str, Any]:
    """N queued transient messages: broker RSS per message, then drain rate.

    The fill uses confirms (window 1,000) so that no large unprocessed tail
    sits in socket buffers or broker mailboxes when RSS is read: the delta is
    then the cost of the stored messages, not of a transient peak.
    """
    count = ctx.opts.backlog
    queue = ctx.new_queue()
    baseline = RssBaseline(ctx.broker_pid).take()
    worker = Publisher(
        ctx.url, "", [queue], BODY, duration=ctx.opts.cap, limit=count, window=CONFIRM_WINDOW
    )
    fill = ctx.timed([worker])
    fill_seconds = fill.end() - fill.t0
    ctx.wait_count(queue, count)
    time.sleep(2.0)  # let the broker settle (GC, allocator) before RSS is read
    grown, rss1 = baseline.delta(), rss_bytes(ctx.broker_pid)
    memory: dict[str, Any] = {
        "backlog": count,
        "publish_msgs_per_s": round(count / fill_seconds, 1),
    }
    if grown is not None and rss1 is not None:
        memory["rss_bytes_per_msg"] = round(grown / count, 1)
        memory["broker_rss_mb"] = round(rss1 / 2**20, 1)
        memory.update(baseline.fields())
    ctx.partial.update(memory)
    drain = ctx.timed([Consumer(ctx.url, [queue], PREFETCH, duration=ctx.opts.cap, expect=count)])
    seconds = drain.end() - drain.t0
    drained = rate_fields(drain.count(), seconds, "drain_msgs_per_s")
    return {**memory, **drained, **drain.cpu_fields()}


def aiopika_publish(ctx: Ctx) -> dict[str, Any]:
    """Reference: one aio-pika publish loop (no confirms) into one queue."""
    import aio_pika  # only this reference scenario needs it

    queue = ctx.new_queue()
    duration = ctx.opts.duration

    async def loop() -> tuple[int, float]:
        conn = await aio_pika.connect(ctx.url.raw, timeout=10)
        async with conn:
            channel = await conn.channel(publisher_confirms=False)
            exchange, message = channel.default_exchange, aio_pika.Message(BODY)
            sent, start = 0, time.monotonic()
            while time.monotonic() - start < duration:
                for _ in range(100):
                    await exchange.publish(message, routing_key=queue)
                sent += 100
            return sent, start

    cpu0 = loadgen.cpu_seconds()
    sent, start = asyncio.run(asyncio.wait_for(loop(), timeout=ctx.opts.cap - 5))
    done = ctx.wait_count(queue, sent)
    seconds = done - start
    return {
        **rate_fields(sent, seconds),
        "generator_cpu_share": round((loadgen.cpu_seconds() - cpu0) / seconds, 3),
    }


SCENARIOS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "publish": publish,
    "publish_confirm": publish_confirm,
    "consume": consume,
    "e2e": e2e,
    "fanout": fanout,
    "topic": topic,
    "persistent": persistent,
    "idle_connections": idle_connections,
    "backlog": backlog,
    "aiopika_publish": aiopika_publish,
}
CORE = ["publish", "publish_confirm", "consume", "e2e"]

# Headline metrics per scenario: (field, label, higher_is_better).
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "fanout": [("deliveries_per_s", "deliveries/s", True)],
    "idle_connections": [
        ("connect_per_s", "connects/s", True),
        ("rss_kb_per_conn", "RSS KB/conn, max of rounds", False),
    ],
    "backlog": [
        ("rss_bytes_per_msg", "RSS B/msg, max of rounds", False),
        ("publish_msgs_per_s", "fill msgs/s", True),
        ("drain_msgs_per_s", "drain msgs/s", True),
    ],
}
DEFAULT_METRIC = [("msgs_per_s", "msgs/s", True)]


def metrics_for(scenario: str) -> list[tuple[str, str, bool]]:
    return METRICS.get(scenario, DEFAULT_METRIC)
