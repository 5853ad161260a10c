"""Full disks, failing disks and dead peers, with real clients against a real broker process.

The disk is a test double where it has to be (``tests.fault_broker``: a free-space probe and
store commits steered through control files); one test fills a genuinely small tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pika
import pytest
from pika.exceptions import NackError

from amqpd.broker.broker import DISK, MEMORY, Broker, blocked_reason
from amqpd.cli import ping
from amqpd.config.settings import Settings
from amqpd.listeners import raise_open_files_limit

from .broker_process import BrokerProcess

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def connect(broker: BrokerProcess, **kwargs: object) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(broker.host, broker.port, **kwargs))


def message_count(broker: BrokerProcess, queue: str) -> int:
    connection = connect(broker)  # closed before the broker stops: no 3-s close wait
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def health(broker: BrokerProcess) -> str:
    _, report = ping(broker.host, broker.port, "guest", "guest", "/", 5.0)
    assert report is not None
    return report


def wait_until(condition: Callable[[], bool], timeout: float,
               pump: pika.BlockingConnection | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if pump is not None:
            pump.process_data_events(0.05)
        else:
            time.sleep(0.05)
    return condition()


class FaultBroker(BrokerProcess):
    """amqpd with the disk double; ``set(name, value)`` steers it."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.control = root / "control"
        self.control.mkdir(exist_ok=True)
        self.data_dir = root / "data"
        super().__init__(self.data_dir, *extra, module="tests.fault_broker",
                         env={"AMQPD_TEST_CONTROL": str(self.control)})

    def set(self, name: str, value: object) -> None:
        temporary = self.control / f".{name}"
        temporary.write_text(str(value))
        temporary.replace(self.control / name)

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


@pytest.fixture
def fault_broker(tmp_path: Path) -> Iterator[FaultBroker]:
    broker = FaultBroker(tmp_path, "--set", "limits.disk_free_limit=50MB")
    yield broker
    broker.stop()


# -- the alarms, in the broker (no I/O) ------------------------------------------------------


def test_memory_and_disk_alarms_are_independent() -> None:
    broker = Broker(Settings(disk_free_limit=50_000_000))
    heard: list[frozenset[str]] = []
    broker.add_alarm_listener(heard.append)
    broker.check_disk(10_000_000)
    broker.memory_limit = 0
    broker.journal.queued_bytes = 1
    broker.check_memory()
    assert broker.alarms == {MEMORY, DISK}
    assert blocked_reason(broker.alarms) == "low on memory & disk"
    broker.check_disk(60_000_000)  # disk clears, memory still raised: still blocked
    assert broker.alarms == {MEMORY}
    broker.journal.queued_bytes = 0
    broker.memory_limit = 10
    broker.check_memory()
    assert heard == [{DISK}, {MEMORY, DISK}, {MEMORY}, set()]


def test_disk_alarm_has_hysteresis_and_store_full_overrides_the_probe() -> None:
    broker = Broker(Settings(disk_free_limit=50_000_000))
    assert not broker.check_disk(50_000_000)
    assert broker.check_disk(49_999_999)
    assert broker.check_disk(54_000_000)  # above the limit, inside the 5 MB margin
    assert not broker.check_disk(55_000_000)
    broker.store_full(True)  # ENOSPC from a commit: raised whatever the probe says
    assert broker.check_disk(10**12)
    assert "the store hit a full disk" in broker.health()[0]
    broker.store_full(False)
    assert not broker.disk_alarm
    assert broker.health() == []


# -- the disk alarm, end to end ------------------------------------------------------------


def test_disk_alarm_blocks_publishers_and_consumers_keep_draining(
    fault_broker: FaultBroker,
) -> None:
    publisher = connect(fault_broker, heartbeat=1)
    events: list[str] = []
    publisher.add_on_connection_blocked_callback(
        lambda _, frame: events.append(frame.method.reason))
    publisher.add_on_connection_unblocked_callback(lambda *_: events.append("unblocked"))
    channel = publisher.channel()
    channel.queue_declare("work", durable=True)
    channel.basic_publish("", "work", b"before", PERSISTENT)
    consumer_connection = connect(fault_broker)
    consumer = consumer_connection.channel()

    fault_broker.set("free_bytes", 10_000_000)  # below the 50 MB limit
    assert wait_until(lambda: events == ["low on disk"], 5, pump=publisher)
    assert health(fault_broker).startswith("disk alarm: 10000000 bytes free")
    channel.basic_publish("", "work", b"during", PERSISTENT)  # held unread by the broker
    method, _, body = consumer.basic_get("work")  # consumers still drain
    assert body == b"before"
    consumer.basic_ack(method.delivery_tag)
    fault_broker.set("free_bytes", 52_000_000)  # above the limit, inside the margin
    publisher.process_data_events(2.5)  # > 2 heartbeats: a blocked publisher is not dropped
    assert events == ["low on disk"]
    assert consumer.queue_declare("work", passive=True).method.message_count == 0

    fault_broker.set("free_bytes", 10**10)
    assert wait_until(lambda: events == ["low on disk", "unblocked"], 5, pump=publisher)
    assert wait_until(
        lambda: consumer.queue_declare("work", passive=True).method.message_count == 1, 5)
    assert health(fault_broker) == "ok"
    publisher.close()
    consumer_connection.close()


# -- store errors --------------------------------------------------------------------------


def test_full_disk_on_commit_holds_confirms_and_retries_until_space(tmp_path: Path) -> None:
    broker = FaultBroker(tmp_path, "--set", "limits.disk_free_limit=0")
    try:
        first = connect(broker)
        channel = first.channel()
        channel.queue_declare("orders", durable=True)
        channel.confirm_delivery()
        channel.basic_publish("", "orders", b"1", PERSISTENT)
        first.close()
        broker.set("fail", "enospc")
        confirmed: list[bytes] = []
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                connection = connect(broker)
                other = connection.channel()
                other.confirm_delivery()
                other.basic_publish("", "orders", b"2", PERSISTENT)
                confirmed.append(b"2")
                connection.close()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(1.5)  # about 5 retries with back-off
        assert not confirmed and not errors  # nothing is confirmed before it is committed
        assert health(broker) == "disk alarm: the store hit a full disk"
        broker.set("fail", "")
        thread.join(5)
        assert confirmed == [b"2"] and not errors
        assert health(broker) == "ok"
    finally:
        assert broker.stop() == 0
    log = broker.stderr()
    assert log.count("store commit failed") == 1, log  # one line per state change
    assert log.count("store commit succeeded again") == 1, log
    restarted = BrokerProcess(broker.data_dir)
    try:
        assert message_count(restarted, "orders") == 2
    finally:
        restarted.stop()


def test_write_error_nacks_the_batch_and_refuses_persistent_messages(tmp_path: Path) -> None:
    broker = FaultBroker(tmp_path)
    try:
        connection = connect(broker)
        channel = connection.channel()
        channel.queue_declare("orders", durable=True)
        channel.queue_declare("transient-work")
        channel.confirm_delivery()
        channel.basic_publish("", "orders", b"safe", PERSISTENT)
        broker.set("fail", "eio")
        with pytest.raises(NackError):  # its batch failed: nacked, never acked
            channel.basic_publish("", "orders", b"lost", PERSISTENT)
        broker.set("fail", "")  # the disk "recovers": the store is not trusted again
        with pytest.raises(NackError):  # refused at once from now on
            channel.basic_publish("", "orders", b"refused", PERSISTENT)
        channel.basic_publish("", "orders", b"transient")  # no disk needed: accepted
        channel.basic_publish("", "transient-work", b"also", PERSISTENT)
        assert health(broker).startswith("store failed, persistent messages refused")
        bodies = [channel.basic_get("orders", auto_ack=True)[2] for _ in range(3)]
        assert bodies == [b"safe", b"lost", b"transient"]  # still served from memory
        connection.close()
    finally:
        broker.stop()
    assert "the store failed" in broker.stderr()
    restarted = BrokerProcess(broker.data_dir)
    try:
        # "safe" was confirmed, then consumed -- but that ack never reached the disk: it
        # comes back (at least once); "lost" was nacked and never written.
        assert message_count(restarted, "orders") == 1
    finally:
        restarted.stop()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_file_system(tmp_path: Path) -> None:
    """20 MiB tmpfs, no free-space limit: SQLite itself hits ENOSPC. Confirms stop, the broker
    is killed in that state, and every confirmed message is back after a restart."""
    with small_tmpfs(tmp_path / "disk", "20m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * 8 * 1024 * 1024)
        broker = BrokerProcess(disk / "data", "--set", "limits.disk_free_limit=0")
        confirmed = 0
        done = threading.Event()

        def publish() -> None:
            nonlocal confirmed
            channel = connect(broker).channel()
            channel.queue_declare("fill", durable=True)
            channel.confirm_delivery()
            with contextlib.suppress(Exception):  # the broker is killed under it
                while not done.is_set():
                    channel.basic_publish("", "fill", b"x" * 65536, PERSISTENT)
                    confirmed += 1

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        assert wait_until(lambda: "the store hit a full disk" in health(broker), 30)
        stalled = confirmed
        time.sleep(1.0)
        assert confirmed == stalled  # nothing more is confirmed while the disk is full
        done.set()
        broker.process.kill()
        broker.process.wait()
        ballast.unlink()
        restarted = BrokerProcess(disk / "data")
        try:
            recovered = message_count(restarted, "fill")
        finally:
            restarted.stop()
        print(f"disk full: {stalled} confirmed, {recovered} recovered")
        assert recovered in (stalled, stalled + 1)  # + the one in flight when it filled


# -- dead peers ----------------------------------------------------------------------------


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_handshake_timeout_drops_silent_and_stalled_peers(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, "--set", "listeners.handshake_timeout=0.5")
    try:
        client = connect(broker)  # completes its handshake in time: unaffected
        silent = socket.create_connection((broker.host, broker.port))
        stalled = socket.create_connection((broker.host, broker.port))
        stalled.sendall(b"AMQP\x00\x00\x09\x01")  # gets connection.start, never answers
        started = time.monotonic()
        assert closed_by_peer(silent, 3) and closed_by_peer(stalled, 3)
        assert time.monotonic() - started < 2.5  # 0.5 s plus the 1-s timer
        client.channel().queue_declare("still-open")
        client.close()
    finally:
        broker.stop()


def test_a_silent_peer_is_closed_after_two_missed_heartbeats(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path)
    try:
        connect(broker).close()
        time.sleep(0.3)  # the broker closed its side of that one
        baseline = broker.open_fds()
        frozen = connect(broker, heartbeat=1)  # its I/O loop never runs again: silent
        assert broker.wait_for(lambda: broker.open_fds() > baseline, timeout=1)
        started = time.monotonic()
        assert broker.wait_for(lambda: broker.open_fds() == baseline, timeout=5)
        assert 1.5 <= time.monotonic() - started < 4
        del frozen
    finally:
        broker.stop()


class Listener(Protocol):
    """Where a broker listens: amqpd's ``BrokerProcess`` or a RabbitMQ node
    (``interop/reliability_rabbitmq.py`` floods one with the same sockets)."""

    host: str
    port: int


def flood(address: str, broker: Listener, count: int) -> list[socket.socket]:
    """``count`` sockets connected from ``address`` (any of 127/8 is loopback on Linux) that
    never send a byte."""
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.connect((broker.host, broker.port))
        sockets.append(sock)
    return sockets


def still_open(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets the broker has not closed (checked without blocking)."""
    alive = []
    for sock in sockets:
        sock.setblocking(False)
        try:
            if sock.recv(1):  # the broker never speaks first
                alive.append(sock)
        except BlockingIOError:
            alive.append(sock)
        except OSError:  # reset: closed
            pass
    return alive


def steady_fds(broker: BrokerProcess) -> int:
    """The broker's open descriptors once two counts 0.1 s apart agree (at most 5 s)."""
    count = broker.open_fds()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.1)
        previous, count = count, broker.open_fds()
        if count == previous:
            break
    return count


def test_thousands_of_half_open_handshakes_do_not_starve_a_client(tmp_path: Path) -> None:
    if raise_open_files_limit() < 2500:  # the broker inherits this process's limits
        pytest.skip("needs an open-files limit of 2,500 for 2,000 flood sockets")
    # A handshake timeout far longer than the test: the flood stays held while the other
    # client is served (listeners.max_handshakes_per_address keeps its default, 64).
    broker = BrokerProcess(tmp_path, "--set", "listeners.handshake_timeout=60")
    flooding: list[socket.socket] = []
    try:
        connect(broker).close()
        # The broker closes that connection's socket a moment after the client: count from
        # when its descriptors stop changing.
        baseline = steady_fds(broker)
        flooding = flood("127.0.0.2", broker, 2000)
        started = time.monotonic()
        client = connect(broker)  # from 127.0.0.1: another address
        channel = client.channel()
        channel.queue_declare("served")
        channel.basic_publish("", "served", b"while flooded")
        assert channel.basic_get("served", auto_ack=True)[2] == b"while flooded"
        connect_seconds = time.monotonic() - started
        client.close()
        # Sockets past the limit are closed at once; the first 64 are held until their
        # handshake timeout, and only they cost the broker a descriptor.
        assert wait_until(lambda: len(still_open(flooding)) == 64, 30), \
            len(still_open(flooding))
        held = broker.open_fds() - baseline
        assert held == 64
        for sock in flooding:
            sock.close()
        assert broker.wait_for(lambda: broker.open_fds() <= baseline, timeout=10)
        # Closed half-open sockets gave their places back: the address may try again.
        flooding = flood("127.0.0.2", broker, 65)
        assert wait_until(lambda: len(still_open(flooding)) <= 64, 30)
        assert broker.wait_for(lambda: broker.open_fds() - baseline == 64, timeout=10)
        print(f"handshake flood: 2,000 from 127.0.0.2, {held} held, the others closed; "
              f"control client from 127.0.0.1 in {connect_seconds * 1000:.0f} ms")
    finally:
        for sock in flooding:
            sock.close()
        broker.stop()
    assert broker.process.stderr is not None
    log = broker.process.stderr.read()
    refusals = log.count("refusing connections from 127.0.0.2")
    assert 1 <= refusals <= 10, log  # one line per address per 10 s, not one per socket
    assert "64 sockets from it are in the handshake" in log


def test_a_dead_consumer_with_a_full_socket_is_closed(tmp_path: Path) -> None:
    """The peer stopped reading and sending: the writer is stuck in send() on a full
    socket, so the heartbeat timeout alone would never close it."""
    broker = BrokerProcess(tmp_path)
    try:
        connect(broker).close()
        time.sleep(0.3)
        baseline = broker.open_fds()
        frozen = connect(broker, heartbeat=1)
        frozen_channel = frozen.channel()
        frozen_channel.queue_declare("stream")
        frozen_channel.basic_consume("stream", lambda *_: None)
        frozen.process_data_events(0)  # consume-ok; this client never reads again
        publisher = connect(broker)
        channel = publisher.channel()
        for _ in range(80):  # 20 MB: far more than both socket buffers hold
            channel.basic_publish("", "stream", b"x" * 256 * 1024)
        publisher.close()
        started = time.monotonic()
        assert broker.wait_for(lambda: broker.open_fds() <= baseline, timeout=8), (
            f"{broker.open_fds()} open fds, baseline {baseline}")
        assert time.monotonic() - started < 6
        del frozen
    finally:
        broker.stop()
