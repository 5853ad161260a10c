"""The reliability measurements of ``tests/`` run against RabbitMQ, for the README's
side-by-side figures (amqpd's own runs are the tests themselves).

    .venv/bin/python -m interop.reliability_rabbitmq flood|stalled|fuzz|disk|all
        [--messages 3000] [--cases 1000] [--seed 1] [--state FILE]

Each measurement gets a fresh private node from ``interop/rabbitmq.py`` (Debian's RabbitMQ,
its own data directory and ports) unless ``--state`` names one started with ``rabbitmq.py
start`` (``disk`` always starts its own: its data directory must be on a small tmpfs). The
code that floods, stalls and fuzzes is the tests' own (``tests/test_reliability.py``,
``tests/test_stalled_peer.py``, ``tests/fuzz/test_fuzz_sockets.py``), pointed at the node;
memory and descriptors are those of its ``beam.smp`` (the pid RabbitMQ writes to its pid file).
Prints one line per figure, with the load average.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika

from amqpd.listeners import raise_open_files_limit
from interop import rabbitmq
from tests.fuzz.test_fuzz_sockets import ControlClient, fuzz_one, mutated_sessions
from tests.test_reliability import flood, still_open
from tests.test_stalled_peer import measure, report


class RabbitNode:
    """A running private node, seen the way the tests see a ``BrokerProcess``."""

    def __init__(self, instance: rabbitmq.Instance) -> None:
        self.instance = instance
        self.host = "127.0.0.1"
        self.port = instance.port

    @property
    def pid(self) -> int:
        """beam.smp's, not the launcher's: the process that holds the memory and sockets."""
        return int(Path(self.instance.pid_file).read_text().strip())

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return rabbitmq._amqp_ready(self.port)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.ConnectionParameters(self.host, self.port))

    def error_events(self) -> dict[str, str]:
        """The node's logged errors, one per event (a crash report spans many lines, each
        with the same timestamp and process), with their text."""
        events: dict[str, str] = collections.defaultdict(str)
        for path in Path(self.instance.base_dir, "log").glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if " [error] " in line:
                    events[" ".join(line.split()[:4])] += line + "\n"
        return events


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def node(state: Path | None) -> Iterator[RabbitNode]:
    if state is not None:
        yield RabbitNode(rabbitmq.Instance(**json.loads(state.read_text())))
        return
    instance = rabbitmq.start()
    try:
        yield RabbitNode(instance)
    finally:
        rabbitmq.stop(instance)


def handshake_flood(target: RabbitNode, count: int = 2000) -> str:
    """``count`` silent sockets from 127.0.0.2, then a pika client from 127.0.0.1 declares,
    publishes and gets; then how long RabbitMQ holds each silent socket (from its connect to
    the close seen by the client, polled every 0.2 s) and beam.smp's peak descriptors."""
    raise_open_files_limit()  # 2,000 sockets on this side
    target.connect().close()
    time.sleep(0.5)
    baseline = target.open_fds()
    peak = [0]
    sampling = threading.Event()

    def sample_descriptors() -> None:
        while not sampling.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], target.open_fds() - baseline)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample_descriptors, daemon=True)
    sampler.start()
    started = time.monotonic()
    flooding: list[tuple[float, socket.socket]] = []
    for _ in range(count):
        flooding += [(time.monotonic(), sock) for sock in flood("127.0.0.2", target, 1)]
    flood_seconds = time.monotonic() - started
    held_after_flood = len(still_open([sock for _, sock in flooding]))
    control_started = time.monotonic()
    client = target.connect()
    channel = client.channel()
    channel.queue_declare("served")
    channel.basic_publish("", "served", b"while flooded")
    assert channel.basic_get("served", auto_ack=True)[2] == b"while flooded"
    control_seconds = time.monotonic() - control_started
    client.close()
    lifetimes: list[float] = []
    waiting = flooding
    while waiting and time.monotonic() - started < 90:
        now = time.monotonic()
        alive = {id(sock) for sock in still_open([sock for _, sock in waiting])}
        lifetimes += [now - connected for connected, sock in waiting if id(sock) not in alive]
        waiting = [(connected, sock) for connected, sock in waiting if id(sock) in alive]
        time.sleep(0.2)
    sampling.set()
    sampler.join()
    for _, sock in flooding:
        sock.close()
    lifetimes.sort()
    closes = (f"each closed {lifetimes[0]:.1f}-{lifetimes[-1]:.1f} s after its connect "
              f"(median {lifetimes[len(lifetimes) // 2]:.1f} s)" if lifetimes else "none closed")
    return (f"handshake flood: {count:,} silent sockets from 127.0.0.2 connected in "
            f"{flood_seconds:.1f} s, {held_after_flood:,} of them still held at the end of the "
            f"flood (beam.smp peak +{peak[0]:,} descriptors); control client from 127.0.0.1 "
            f"(connect, declare, publish, get) in {control_seconds * 1000:.0f} ms; {closes}, "
            f"{len(waiting)} still open after 90 s ({load()})")


def stalled_consumer(target: RabbitNode, messages: int) -> str:
    return report(measure(target, messages)) + f" ({load()})"


def frame_fuzzing(target: RabbitNode, cases: int, seed: int) -> str:
    """The socket fuzzer's mutated sessions against the node, a pika control client
    publishing and consuming meanwhile."""
    control = ControlClient(target)
    control.start()
    outcomes: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    errors_before = target.error_events()
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for outcome, found in pool.map(
                    lambda case: fuzz_one((target.host, target.port), case),
                    mutated_sessions(cases, seed)):
                outcomes[outcome] += 1
                for problem in found:
                    kind = " ".join(problem.split()[:2])
                    problems[kind] += 1
                    examples.setdefault(kind, problem[:160])
        time.sleep(0.5)
    finally:
        control.stop.set()
        control.join(10)
    elapsed = time.monotonic() - started
    errors = [text for key, text in target.error_events().items() if key not in errors_before]
    crashes = sum("crasher" in text for text in errors)
    # For a look at what went wrong inside RabbitMQ (the node's directory is removed).
    Path(tempfile.gettempdir(), "rabbitmq-fuzz-errors.log").write_text("".join(errors))
    # Replies outside amqpd's documented list are findings for amqpd, a difference here.
    return (f"socket fuzzing: {cases:,} connections (seed {seed}) in {elapsed:.0f} s: "
            f"{dict(sorted(outcomes.items()))}; replies outside amqpd's documented codes: "
            f"{dict(problems) or 'none'} (e.g. {list(examples.values())}); node up "
            f"afterwards: {target.alive()}; "
            f"{len(errors)} errors logged, {crashes} of them crash reports; control client: "
            f"{len(control.round_trips)} round trips, slowest "
            f"{max(control.round_trips, default=0) * 1000:.0f} ms, errors "
            f"{[repr(error) for error in control.errors] or 'none'} ({load()})")


MEASUREMENTS: dict[str, Callable[[RabbitNode, argparse.Namespace], str]] = {
    "flood": lambda target, args: handshake_flood(target),
    "stalled": lambda target, args: stalled_consumer(target, args.messages),
    "fuzz": lambda target, args: frame_fuzzing(target, args.cases, args.seed),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("measurement", choices=[*MEASUREMENTS, "disk", "all"])
    parser.add_argument("--messages", type=int, default=3000, help="stalled: 64 KiB messages")
    parser.add_argument("--cases", type=int, default=1000, help="fuzz: connections")
    parser.add_argument("--seed", type=int, default=1, help="fuzz: the cases' seed")
    parser.add_argument("--state", type=Path, default=None,
                        help="a node from `interop/rabbitmq.py --state FILE start`")
    args = parser.parse_args(argv)
    chosen = list(MEASUREMENTS) if args.measurement == "all" else \
        [name for name in MEASUREMENTS if name == args.measurement]
    for name in chosen:
        with node(args.state) as target:
            print(MEASUREMENTS[name](target, args), flush=True)
    if args.measurement in ("disk", "all"):
        from interop.reliability_rabbitmq_disk import full_disk

        print(full_disk(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
