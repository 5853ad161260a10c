"""The soak (``make soak``, by hand; minutes, not part of ``make test``).

Against a fresh amqpd (default) or any broker (``--url``, e.g. the RabbitMQ of
``interop/rabbitmq.py start``, with ``--rabbitmq-state`` to find its process for RSS):

1. idle: the broker's RSS and a control client's latency (open-loop pings: a publish at a
   fixed rate, consumed by the same client; latency from the *scheduled* send time, so a
   stalled broker cannot hide behind a client that waits for it);
2. ``--connections`` connections (10,000) that complete the handshake with heartbeats
   (``--heartbeat``, 10 s) and keep sending them for ``--seconds`` (600), while the control
   client pings again: connections still open at the end, RSS per connection, latency;
3. ``--channels`` channels (1,000) on one connection: RSS per channel;
4. ``--queues`` queues (100,000) declared on one connection: RSS per queue, declares/s.

All traffic goes to 127.0.0.1; every phase is bounded in count and time. The soak raises
its own open-files limit to the hard limit (10,000 sockets need more than the usual 1,024);
amqpd raises its own at start and logs it, which the soak checks.

    python interop/soak.py [--seconds 600] [--connections 10000] [--json FILE]
    python interop/soak.py --url amqp://guest:guest@127.0.0.1:PORT/%2F --rabbitmq-state F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pamqp import commands
from pamqp import frame as pframe

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_rss(pid: int, seconds: float = 3.0) -> int:
    """RSS once the broker has had a moment to settle (garbage, Erlang's lazy GC)."""
    time.sleep(seconds)
    return rss(pid)


# -- the broker -------------------------------------------------------------------------------


class Amqpd:
    """A fresh amqpd on 127.0.0.1, log at info (the open-files line), stderr to a file."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="amqpd-soak-")
        self.log_path = Path(self.directory.name) / "amqpd.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "amqpd", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(Path(self.directory.name) / "data"), "--log-level", "info",
             "--management-port", "0",
             # The soak client opens 200 connections at a time from one address: above the
             # default limit of sockets in the handshake per address (64).
             "--set", "listeners.max_handshakes_per_address=256"],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.log, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"amqpd did not start: {line!r} {self.log_path.read_text()}")
        host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        self.host, self.port, self.pid = host, int(port), self.process.pid
        # Keep reading stdout (the management line) so the pipe never fills.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def log_text(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        self.directory.cleanup()
        return code


def beam_pid(state: Path) -> int:
    """The beam.smp process of the RabbitMQ that interop/rabbitmq.py started."""
    nodename = json.loads(state.read_text())["nodename"]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environment = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"beam.smp") and \
                b"RABBITMQ_NODENAME=" + nodename.encode() in environment:
            return int(entry)
    raise RuntimeError(f"no beam.smp for {nodename}")


# -- a minimal asyncio AMQP client (pamqp frames) ----------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(7)
    size = struct.unpack_from(">I", head, 3)[0]
    rest = await reader.readexactly(size + 1)
    return pframe.unmarshal(head + rest)[2]


async def expect(reader: asyncio.StreamReader, kind: type) -> Any:
    while True:
        value = await read_frame(reader)
        if isinstance(value, kind):
            return value
        if isinstance(value, commands.Connection.Close):
            raise RuntimeError(f"connection.close {value.reply_code} {value.reply_text}")


async def open_connection(host: str, port: int, heartbeat: int
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(PROTOCOL_HEADER)
    await expect(reader, commands.Connection.Start)
    writer.write(pframe.marshal(commands.Connection.StartOk(
        {"product": "amqpd-soak"}, "PLAIN", "\0guest\0guest", "en_US"), 0))
    tune = await expect(reader, commands.Connection.Tune)
    writer.write(pframe.marshal(commands.Connection.TuneOk(
        tune.channel_max, tune.frame_max, heartbeat), 0))
    writer.write(pframe.marshal(commands.Connection.Open("/"), 0))
    await expect(reader, commands.Connection.OpenOk)
    return reader, writer


class Idle:
    """One idle connection that answers heartbeats: it sends one every heartbeat/2 and
    reads (and drops) whatever arrives; ``alive`` turns false when the broker closes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 heartbeat: int) -> None:
        self.reader, self.writer, self.heartbeat = reader, writer, heartbeat
        self.alive = True

    async def run(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while loop.time() < until:
                try:
                    data = await asyncio.wait_for(self.reader.read(4096), self.heartbeat / 2)
                    if not data:
                        self.alive = False
                        return
                except TimeoutError:
                    pass
                self.writer.write(HEARTBEAT_FRAME)
        except OSError:
            self.alive = False


async def hold_connections(host: str, port: int, count: int, heartbeat: int, seconds: float,
                           opened: threading.Event, measured: threading.Event,
                           result: dict[str, Any]) -> None:
    semaphore = asyncio.Semaphore(200)  # handshakes in flight
    failures: list[str] = []

    async def one() -> Idle | None:
        async with semaphore:
            try:
                reader, writer = await asyncio.wait_for(open_connection(host, port, heartbeat),
                                                        60)
                return Idle(reader, writer, heartbeat)
            except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failures.append(repr(exc))
                return None

    started = time.monotonic()
    idle = [c for c in await asyncio.gather(*(one() for _ in range(count))) if c is not None]
    result["open_seconds"] = time.monotonic() - started
    result["opened"] = len(idle)
    result["open_failures"] = failures[:5]
    opened.set()
    until = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(*(connection.run(until) for connection in idle))
    result["alive_at_end"] = sum(connection.alive for connection in idle)
    await asyncio.to_thread(measured.wait, 120)  # the RSS under load is read before closing
    for connection in idle:
        connection.writer.close()
    await asyncio.sleep(1)


async def many_channels(host: str, port: int, count: int, pid: int) -> dict[str, float]:
    reader, writer = await open_connection(host, port, 0)
    before = await asyncio.to_thread(settled_rss, pid, 1.0)
    started = time.monotonic()
    for channel in range(1, count + 1):
        writer.write(pframe.marshal(commands.Channel.Open(), channel))
    for _ in range(count):
        await expect(reader, commands.Channel.OpenOk)
    seconds = time.monotonic() - started
    after = await asyncio.to_thread(settled_rss, pid)
    writer.close()
    return {"channels": count, "rss_per_channel": (after - before) / count,
            "channels_per_second": count / seconds}


async def many_queues(host: str, port: int, count: int, pid: int) -> dict[str, float]:
    reader, writer = await open_connection(host, port, 0)
    writer.write(pframe.marshal(commands.Channel.Open(), 1))
    await expect(reader, commands.Channel.OpenOk)
    before = await asyncio.to_thread(settled_rss, pid, 1.0)
    started = time.monotonic()
    batch = 1000
    for first in range(0, count, batch):  # pipelined, a thousand declares in flight
        writer.write(b"".join(
            pframe.marshal(commands.Queue.Declare(queue=f"soak.q.{number}"), 1)
            for number in range(first, min(count, first + batch))))
        for _ in range(min(count, first + batch) - first):
            await expect(reader, commands.Queue.DeclareOk)
    seconds = time.monotonic() - started
    after = await asyncio.to_thread(settled_rss, pid)
    for first in range(0, count, batch):  # leave the broker as it was
        writer.write(b"".join(
            pframe.marshal(commands.Queue.Delete(queue=f"soak.q.{number}"), 1)
            for number in range(first, min(count, first + batch))))
        for _ in range(min(count, first + batch) - first):
            await expect(reader, commands.Queue.DeleteOk)
    writer.close()
    return {"queues": count, "rss_per_queue": (after - before) / count,
            "declares_per_second": count / seconds}


def run_loop(coroutine: Any) -> Any:
    """asyncio.run on uvloop when it is installed: 10,000 sockets in one Python process
    should cost the machine (which the broker shares) as little CPU as possible."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- the control client: open-loop pings in a child process ------------------------------------


def ping(host: str, port: int, rate: float, seconds: float) -> dict[str, float]:
    """Publish one small message every 1/rate s to an exclusive queue and consume it on the
    same connection; latency counts from the scheduled send time (open loop)."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host, port, heartbeat=30, blocked_connection_timeout=30))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    latencies: list[float] = []

    def on_message(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        latencies.append(time.monotonic() - struct.unpack(">d", body)[0])

    channel.basic_consume(queue, on_message, auto_ack=True)
    started = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < started + seconds:
        scheduled = started + sent / rate
        if now >= scheduled:
            channel.basic_publish("", queue, struct.pack(">d", scheduled))
            sent += 1
        else:
            connection.process_data_events(scheduled - now)
    drain_until = time.monotonic() + 5
    while len(latencies) < sent and time.monotonic() < drain_until:
        connection.process_data_events(0.1)
    connection.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"sent": sent, "received": len(latencies), "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000}


def ping_process(host: str, port: int, rate: float, seconds: float) -> subprocess.Popen[str]:
    # Its own process: the 10,000 connections' event loop must not delay the pings.
    return subprocess.Popen(
        [sys.executable, __file__, "ping", "--host", host, "--port", str(port),
         "--ping-rate", str(rate), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, text=True)


def ping_result(process: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = process.communicate(timeout=3600)
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- the soak -----------------------------------------------------------------------------------


def soak(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    if nofile < args.connections + 100:
        raise SystemExit(f"the open-files limit is {nofile}; {args.connections} connections "
                         "need more (raise the hard limit: ulimit -Hn)")
    broker: Amqpd | None = None
    if args.url:
        parsed = urlparse(args.url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 5672
        pid = beam_pid(args.rabbitmq_state) if args.rabbitmq_state else args.broker_pid
        name = "rabbitmq" if args.rabbitmq_state else "broker at " + args.url
    else:
        broker = Amqpd()
        host, port, pid, name = broker.host, broker.port, broker.pid, "amqpd"
    report: dict[str, Any] = {"broker": name, "date": time.strftime("%Y-%m-%d"),
                              "connections": args.connections, "seconds": args.seconds,
                              "heartbeat": args.heartbeat, "client_nofile": nofile}
    try:
        if broker is not None:
            time.sleep(0.5)
            lines = [line for line in broker.log_text().splitlines()
                     if "open files limit" in line]
            report["open_files_log"] = lines[0] if lines else "MISSING"
        report["rss_idle"] = settled_rss(pid, 2.0)
        print(f"[{name}] idle RSS {report['rss_idle'] / 2**20:.1f} MiB; idle pings ...",
              flush=True)
        report["ping_idle"] = ping_result(ping_process(host, port, args.ping_rate,
                                                       args.idle_seconds))
        print(f"  idle latency {report['ping_idle']}", flush=True)

        held: dict[str, Any] = {}
        opened, measured = threading.Event(), threading.Event()
        holder = threading.Thread(target=lambda: run_loop(hold_connections(
            host, port, args.connections, args.heartbeat, args.seconds, opened, measured,
            held)), daemon=True)
        holder.start()
        opened.wait(600)
        report["rss_connections"] = settled_rss(pid)
        print(f"  {held.get('opened')} connections open in {held.get('open_seconds', 0):.1f} s"
              f"; RSS {report['rss_connections'] / 2**20:.1f} MiB; holding {args.seconds} s "
              "with pings ...", flush=True)
        cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
        client_cpu_start = time.process_time()
        pings = ping_process(host, port, args.ping_rate, max(10.0, args.seconds - 15))
        report["ping_loaded"] = ping_result(pings)
        wall = time.monotonic() - wall_start
        report["broker_cpu_percent"] = 100 * (cpu_seconds(pid) - cpu_start) / wall
        report["soak_client_cpu_percent"] = 100 * (time.process_time() - client_cpu_start) / wall
        print(f"  latency under load {report['ping_loaded']}", flush=True)
        while holder.is_alive() and "alive_at_end" not in held:
            time.sleep(1)
        report["rss_connections_end"] = rss(pid)
        measured.set()
        holder.join(120)
        report.update(held)
        opened_count = max(1, int(held.get("opened", 1)))
        report["rss_per_connection"] = (report["rss_connections"] - report["rss_idle"]) \
            / opened_count
        print(f"  {held.get('alive_at_end')} of {held.get('opened')} alive at the end; "
              f"{report['rss_per_connection'] / 1024:.1f} KiB per connection; broker CPU "
              f"{report['broker_cpu_percent']:.0f}%, soak client CPU "
              f"{report['soak_client_cpu_percent']:.0f}%", flush=True)

        if broker is not None:
            # A fresh broker for each count: CPython keeps the memory of the closed
            # connections and would hand it to the channels and queues (RSS would not grow).
            report["exit_code"] = broker.stop()
            broker = Amqpd()
            host, port, pid = broker.host, broker.port, broker.pid
        report.update(asyncio.run(many_channels(host, port, args.channels, pid)))
        print(f"  {args.channels} channels: {report['rss_per_channel'] / 1024:.1f} KiB each",
              flush=True)
        if broker is not None:
            report["exit_code"] = broker.stop() or report["exit_code"]
            broker = Amqpd()
            host, port, pid = broker.host, broker.port, broker.pid
        report.update(asyncio.run(many_queues(host, port, args.queues, pid)))
        print(f"  {args.queues} queues: {report['rss_per_queue']:.0f} B each, "
              f"{report['declares_per_second']:.0f} declares/s", flush=True)
    finally:
        if broker is not None:
            report["exit_code"] = broker.stop() or report.get("exit_code", 0)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="soak", choices=["soak", "ping"])
    parser.add_argument("--url", help="an already running broker (default: start amqpd)")
    parser.add_argument("--rabbitmq-state", type=Path,
                        help="interop/rabbitmq.py's state file: find beam.smp for RSS")
    parser.add_argument("--broker-pid", type=int, default=0)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--queues", type=int, default=100_000)
    parser.add_argument("--ping-rate", type=float, default=50.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    args = parser.parse_args(argv)
    if args.mode == "ping":
        print(json.dumps(ping(args.host, args.port, args.ping_rate, args.seconds)))
        return 0
    if args.url and not (args.rabbitmq_state or args.broker_pid):
        parser.error("--url needs --rabbitmq-state or --broker-pid (for the RSS)")
    report = soak(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = report.get("alive_at_end") == args.connections and report.get("exit_code", 0) == 0
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
