"""The limits on sockets still in the AMQP handshake (listeners.max_handshakes_per_address,
listeners.max_handshakes): counted per peer address and in all, released at
connection.open-ok or when the socket goes, refusals logged once per address per interval.

The flood from 127.0.0.2 while a client from 127.0.0.1 is served is in
tests/test_reliability.py; here are the rules around it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pika
import pytest
from pika.exceptions import AMQPConnectionError

from amqpd.listeners import REFUSAL_LOG_INTERVAL, HandshakeLimits

from .broker_process import BrokerProcess
from .test_reliability import connect, flood, still_open, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limits_count_per_address_and_in_all_and_release_once() -> None:
    limits = HandshakeLimits(per_address=2, total=3)
    first = limits.admit("10.0.0.1")
    second = limits.admit("10.0.0.1")
    assert first is not None and second is not None
    assert limits.admit("10.0.0.1") is None  # that address is full
    other = limits.admit("10.0.0.2")
    assert other is not None
    assert limits.admit("10.0.0.3") is None  # all addresses together are full
    first.release()
    first.release()  # a second release (open-ok, then the socket closing) counts once
    assert limits.in_handshake == 2
    assert limits.by_address == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert limits.admit("10.0.0.1") is not None
    second.release()
    other.release()
    assert limits.by_address == {"10.0.0.1": 1}


def test_zero_means_no_limit_and_an_unknown_peer_counts_only_in_the_total() -> None:
    unlimited = HandshakeLimits(per_address=0, total=0)
    assert all(unlimited.admit("10.0.0.1") is not None for _ in range(10_000))
    limits = HandshakeLimits(per_address=1, total=2)
    assert limits.admit(None) is not None and limits.admit(None) is not None
    assert limits.admit(None) is None


def test_refusals_are_logged_once_per_address_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limits = HandshakeLimits(per_address=1, total=0, clock=clock)
    assert limits.admit("10.0.0.1") is not None
    assert limits.admit("10.0.0.2") is not None
    with caplog.at_level(logging.WARNING, logger="amqpd.server"):
        for _ in range(500):
            assert limits.admit("10.0.0.1") is None
        assert limits.admit("10.0.0.2") is None  # another address: a line of its own
        clock.now += REFUSAL_LOG_INTERVAL
        assert limits.admit("10.0.0.1") is None
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "refusing connections from 10.0.0.1: 1 sockets from it are in the handshake "
        "(listeners.max_handshakes_per_address); 1 refused",
        "refusing connections from 10.0.0.2: 1 sockets from it are in the handshake "
        "(listeners.max_handshakes_per_address); 1 refused",
        "refusing connections from 10.0.0.1: 1 sockets from it are in the handshake "
        "(listeners.max_handshakes_per_address); 500 refused in the last 10 s",
    ]


def test_open_connections_do_not_count_against_the_address(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, "--set", "listeners.max_handshakes_per_address=3")
    connections: list[pika.BlockingConnection] = []
    half_open: list[socket.socket] = []
    try:
        # Ten clients from one address, each past connection.open-ok before the next: the
        # address never has more than one socket in the handshake.
        connections = [connect(broker) for _ in range(10)]
        half_open = flood("127.0.0.1", broker, 4)
        assert wait_until(lambda: len(still_open(half_open)) <= 3, 30)
        assert len(still_open(half_open)) == 3  # the fourth was refused
        for connection in connections:  # all ten still work
            connection.channel().queue_declare("", exclusive=True)
    finally:
        for sock in half_open:
            sock.close()
        for connection in connections:
            connection.close()
        broker.stop()


def test_the_total_limit_refuses_every_address_until_places_free_up(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path, "--set", "listeners.max_handshakes=20",
                           "--set", "listeners.max_handshakes_per_address=15",
                           "--set", "listeners.handshake_timeout=60")
    first: list[socket.socket] = []
    second: list[socket.socket] = []
    try:
        first = flood("127.0.0.2", broker, 15)
        second = flood("127.0.0.3", broker, 10)
        assert wait_until(lambda: len(still_open(second)) <= 5, 30)
        assert len(still_open(first)) == 15 and len(still_open(second)) == 5
        with pytest.raises(AMQPConnectionError):  # 20 in the handshake: refused too
            pika.BlockingConnection(pika.ConnectionParameters(
                broker.host, broker.port, connection_attempts=1))
        for sock in first:
            sock.close()
        connection = connect(broker)  # places are free again
        connection.channel().queue_declare("", exclusive=True)
        connection.close()
    finally:
        for sock in first + second:
            sock.close()
        broker.stop()
    assert broker.process.stderr is not None
    log = broker.process.stderr.read()
    assert "refusing connections: 20 sockets are in the handshake " \
        "(listeners.max_handshakes)" in log, log
