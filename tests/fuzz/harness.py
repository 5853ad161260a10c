"""Drive one sans-IO amqpd Connection over a real in-process Broker with (mutated) bytes, and
judge what comes back.

The oracle, per case:

- nothing raises out of ``data_received``, ``tick``, ``on_drained`` or ``connection_lost``;
- nothing is logged at ERROR: ``Connection.data_received`` answers an unexpected exception
  in a handler with 541 INTERNAL_ERROR and ``LOGGER.exception`` -- and during the handshake
  with a bare close and the same log line, so the log is the one place a bug always shows;
- every byte the broker sends decodes with pamqp (the reference codec);
- every connection.close carries a documented hard reply code and every channel.close a
  documented soft one (AMQP 0-9-1 §1.2 and RabbitMQ; never 541);
- afterwards a clean client on the same broker still declares, publishes and gets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pamqp import commands
from pamqp import frame as pframe
from pamqp.body import ContentBody

from amqpd.broker.broker import Broker
from amqpd.config.settings import Settings
from amqpd.session.connection import Connection

from .mutations import PROTOCOL_HEADER, handshake, method, publish, split_points

# Hard errors (connection.close) and soft errors (channel.close) of AMQP 0-9-1 §1.2, as
# RabbitMQ uses them: 403 closes the connection for a refused login or vhost, 320 is
# shutdown. 541 INTERNAL_ERROR is what amqpd sends for a bug, so it is not allowed here.
CONNECTION_CODES = frozenset({320, 402, 403, 501, 502, 503, 504, 505, 506, 530, 540})
CHANNEL_CODES = frozenset({311, 312, 313, 403, 404, 405, 406})

_HEADER = struct.Struct(">BHI")


class _ErrorLog(logging.Handler):
    """Collects ERROR records of the amqpd loggers while a case runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _error_log() -> Iterator[_ErrorLog]:
    """Collect amqpd's ERROR records; meanwhile its INFO lines ("closing connection ...",
    one per rejected frame) do not reach the root logger, which would drown a long run.
    Both are undone afterwards, so other tests' log captures are untouched."""
    logger = logging.getLogger("amqpd")
    handler = _ErrorLog()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


@dataclass
class Outcome:
    """What one case did: problems found (empty = pass) and what the broker answered."""

    problems: list[str] = field(default_factory=list)
    connection_closes: list[int] = field(default_factory=list)
    channel_closes: list[int] = field(default_factory=list)
    frames_in: int = 0


def server_frames(data: bytes) -> Iterator[tuple[int, Any]]:
    """Decode what the broker sent; raises ValueError for a frame pamqp cannot read."""
    if data.startswith(PROTOCOL_HEADER):
        data = data[8:]
    while data:
        if len(data) < 8:
            raise ValueError(f"trailing {len(data)} bytes are not a frame: {data!r}")
        _, _, size = _HEADER.unpack_from(data)
        try:
            consumed, channel, value = pframe.unmarshal(data[: size + 8])
        except Exception as exc:
            raise ValueError(f"undecodable frame {data[:40]!r}...: {exc}") from exc
        yield channel, value
        data = data[consumed:]


class Driver:
    """One Connection on a Broker, with a clock the driver moves."""

    def __init__(self, broker: Broker) -> None:
        self.now = 1000.0
        self.connection = Connection(broker, ("127.0.0.1", 40000), clock=lambda: self.now)
        self.output = bytearray()

    def feed(self, data: bytes) -> None:
        self.connection.data_received(data)
        self._collect()

    def _collect(self) -> None:
        self.output += self.connection.data_to_send()
        if self.connection.held_back:  # what the shell does once its writer drained
            self.connection.on_drained()
            self.output += self.connection.data_to_send()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.connection.tick()
        self._collect()


def _judge(output: bytes, outcome: Outcome) -> None:
    try:
        for _, value in server_frames(output):
            if isinstance(value, commands.Connection.Close):
                outcome.connection_closes.append(value.reply_code)
                if value.reply_code not in CONNECTION_CODES:
                    outcome.problems.append(f"connection.close {value.reply_code} "
                                            f"{value.reply_text!r}")
            elif isinstance(value, commands.Channel.Close):
                outcome.channel_closes.append(value.reply_code)
                if value.reply_code not in CHANNEL_CODES:
                    outcome.problems.append(f"channel.close {value.reply_code} "
                                            f"{value.reply_text!r}")
    except ValueError as exc:
        outcome.problems.append(f"the broker sent bytes pamqp cannot decode: {exc}")


def _control_session() -> list[bytes]:
    return [*handshake(), method(1, commands.Channel.Open()),
            method(1, commands.Queue.Declare(queue="fuzz.control")),
            *publish(1, "", "fuzz.control", b"still served"),
            method(1, commands.Basic.Get(queue="fuzz.control", no_ack=True))]


def _control_works(broker: Broker) -> str | None:
    driver = Driver(broker)
    try:
        driver.feed(b"".join(_control_session()))
        frames = [value for _, value in server_frames(bytes(driver.output))]
    except Exception as exc:
        return f"a clean client failed after the case: {exc!r}"
    bodies = [value.value for value in frames if isinstance(value, ContentBody)]
    if b"still served" not in bodies:
        return f"a clean client was not served after the case: {frames[-3:]!r}"
    return None


def run_case(elements: Sequence[bytes], cuts: Sequence[int] = (),
             settings: Settings | None = None, control: bool = True) -> Outcome:
    """Feed ``elements`` (split into reads at ``cuts``) to a fresh connection and judge."""
    broker = Broker(settings or Settings())
    outcome = Outcome(frames_in=len(elements))
    data = b"".join(elements)
    points = [0, *split_points(len(data), cuts), len(data)]
    driver = Driver(broker)
    step = "data_received"
    with _error_log() as errors:
        try:
            for start, end in itertools.pairwise(points):
                driver.feed(data[start:end])
                driver.now += 0.01
            step = "tick"
            for _ in range(3):  # consumer timeouts, heartbeats, the close time-out
                driver.advance(1.5)
            step = "connection_lost"
            driver.connection.connection_lost()
        except Exception as exc:
            outcome.problems.append(f"{type(exc).__name__} raised out of {step}: "
                                    f"{''.join(traceback.format_exception(exc))}")
        _judge(bytes(driver.output), outcome)
        if control and not outcome.problems:
            problem = _control_works(broker)
            if problem:
                outcome.problems.append(problem)
    for record in errors.records:
        detail = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        outcome.problems.append(f"logged at {record.levelname}: {record.getMessage()}\n{detail}")
    return outcome
