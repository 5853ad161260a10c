"""The opt-in stage tracer (amqpd/session/trace.py) on a real broker with a real client."""

from __future__ import annotations

from pathlib import Path

import pika

from .broker_process import BrokerProcess


def test_a_traced_broker_writes_the_stages_of_sampled_deliveries(tmp_path: Path) -> None:
    trace_file = tmp_path / "stages.txt"
    broker = BrokerProcess(tmp_path / "data", env={"AMQPD_TRACE_STAGES": str(trace_file),
                                                   "AMQPD_TRACE_EVERY": "2"})
    try:
        parameters = pika.ConnectionParameters(broker.host, broker.port)
        with pika.BlockingConnection(parameters) as connection:
            channel = connection.channel()
            channel.queue_declare("traced")
            received: list[bytes] = []
            channel.basic_consume("traced", lambda _c, _m, _p, body: received.append(body),
                                  auto_ack=True)
            for index in range(20):
                channel.basic_publish("", "traced", b"message %d" % index)
            while len(received) < 20:
                connection.process_data_events(time_limit=1)
    finally:
        assert broker.stop() == 0  # the stamps are written at exit
    rows = [[int(field) for field in line.split()]
            for line in trace_file.read_text().splitlines()]
    assert len(rows) == 10  # one in two of 20
    for row in rows:
        # read time, then parsed, routed, dispatched, encoded, written as offsets from it
        assert len(row) == 6
        assert 0 <= row[1] <= row[2] <= row[3] <= row[4] <= row[5]


def test_an_untraced_broker_writes_nothing(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data")
    try:
        parameters = pika.ConnectionParameters(broker.host, broker.port)
        with pika.BlockingConnection(parameters) as connection:
            channel = connection.channel()
            channel.queue_declare("untraced")
            channel.basic_publish("", "untraced", b"x")
            assert channel.basic_get("untraced", auto_ack=True)[2] == b"x"
    finally:
        assert broker.stop() == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]
