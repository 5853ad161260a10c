"""Lean AMQP 0-9-1 load generator used by ``interop/bench.py``.

A general-purpose Python client (pika, aio-pika) spends tens of microseconds per
message and tops out near 10k msgs/s, which is slower than the brokers we want
to measure.  This module keeps Python out of the per-message path:

* the handshake and the few synchronous methods use pamqp (slow, but rare);
* publishers encode Basic.Publish + ContentHeader + Body once and send many
  copies of it per ``sendall`` (the kernel copy is then the main cost);
* consumers scan frame headers with ``struct`` on a bytearray and decode only
  the delivery tag of Basic.Deliver (fixed offset after the consumer tag) and,
  for latency runs, the timestamp at the start of the body;
* work is spread over forked processes that start their timed phase together
  behind a barrier, and each reports its own CPU use so the caller can tell
  when the generator, not the broker, is the bottleneck.

Everything is blocking sockets with timeouts: a stuck broker makes a worker fail
with an error, never hang.
"""

from __future__ import annotations

import contextlib
import ipaddress
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import re
import resource
import selectors
import signal
import socket
import struct
import time
import traceback
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pamqp import body as pbody
from pamqp import commands, frame, header
from pamqp.base import Frame

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = b"\xce"
FRAME_HDR = struct.Struct(">BHI")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
# type, channel, size=13, class<<16|method, delivery_tag, bits, frame-end
ACK_FRAME = struct.Struct(">BHIIQBB")


def _method_id(class_id: int, method_id: int) -> int:
    return (class_id << 16) | method_id


DELIVER = _method_id(60, 60)
BASIC_ACK = _method_id(60, 80)
BASIC_NACK = _method_id(60, 120)
CONNECTION_CLOSE = _method_id(10, 50)
CHANNEL_CLOSE = _method_id(20, 40)

SOCKET_TIMEOUT = 15.0
SYNC_TIMEOUT = 120.0  # the caller's per-scenario cap is the real bound
RECV_SIZE = 1 << 18
# The largest body frame payload under the default frame_max of 131,072 bytes.
BODY_FRAME_MAX = 131_072 - 8
CLIENT_PROPERTIES = {
    "product": "amqpd-bench",
    "platform": "Python",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
    },
}


class AmqpError(RuntimeError):
    """The broker closed the channel or connection (reply code and text inside)."""


class NotLoopbackError(ValueError):
    """The benchmark only ever sends traffic to this machine."""


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class AmqpUrl:
    host: str
    port: int
    user: str
    password: str
    vhost: str
    raw: str = ""

    @classmethod
    def parse(cls, url: str) -> AmqpUrl:
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"only amqp:// URLs are supported, got {parts.scheme!r}")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5672,
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            # "amqp://h/" and "amqp://h" both mean the default vhost "/".
            vhost=unquote(path) or "/",
            raw=url,
        )

    def masked(self) -> str:
        """The URL as given, with the password replaced by ***."""
        if self.raw:
            return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", self.raw)
        return f"amqp://{quote(self.user)}:***@{self.host}:{self.port}/{quote(self.vhost, '')}"

    def check_loopback(self) -> None:
        """Refuse any host that does not resolve only to loopback addresses."""
        infos = socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_TCP)
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_loopback:
                raise NotLoopbackError(f"{self.host} resolves to {address}, not loopback")


# ------------------------------------------------------------------- connection


class Connection:
    """One AMQP connection with one channel; synchronous methods via pamqp."""

    def __init__(
        self,
        url: AmqpUrl,
        timeout: float = SOCKET_TIMEOUT,
        channel: int = 1,
        open_channel: bool = True,
    ) -> None:
        self.channel = channel
        self.buf = bytearray()
        self.frame_max = 131072
        self.sock = socket.create_connection((url.host, url.port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake(url)
            if open_channel:
                self.rpc(commands.Channel.Open(), commands.Channel.OpenOk)
        except BaseException:
            self.sock.close()
            raise

    # -- framing (slow path)

    def send(
        self, *frames: Frame | header.ContentHeader | pbody.ContentBody, channel: int | None = None
    ) -> None:
        ch = self.channel if channel is None else channel
        self.sock.sendall(b"".join(frame.marshal(f, ch) for f in frames))

    def read_frame(self) -> tuple[int, Any]:
        """Return (channel, pamqp frame) of the next frame, reading as needed."""
        while True:
            if len(self.buf) >= 7:
                _ftype, _ch, size = FRAME_HDR.unpack_from(self.buf, 0)
                if len(self.buf) >= size + 8:
                    used, channel, value = frame.unmarshal(bytes(self.buf[: size + 8]))
                    del self.buf[:used]
                    return channel, value
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("broker closed the TCP connection")
            self.buf += data

    def wait_for(self, *expected: type) -> Any:
        """Read frames until one of `expected` arrives; raise on Close."""
        while True:
            channel, value = self.read_frame()
            if isinstance(value, expected):
                return value
            if isinstance(value, commands.Connection.Close):
                self._send_quietly(commands.Connection.CloseOk(), channel=0)
                raise AmqpError(f"connection closed: {value.reply_code} {value.reply_text}")
            if isinstance(value, commands.Channel.Close):
                self._send_quietly(commands.Channel.CloseOk(), channel=channel)
                raise AmqpError(f"channel closed: {value.reply_code} {value.reply_text}")
            # Anything else (Connection.Blocked, stray confirms) is irrelevant here.

    def rpc(self, method: Frame, *reply: type, channel: int | None = None) -> Any:
        self.send(method, channel=channel)
        return self.wait_for(*reply)

    def _send_quietly(self, method: Frame, channel: int) -> None:
        with contextlib.suppress(OSError):
            self.send(method, channel=channel)

    def _handshake(self, url: AmqpUrl) -> None:
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.wait_for(commands.Connection.Start)
        self.send(
            commands.Connection.StartOk(
                client_properties=CLIENT_PROPERTIES,
                mechanism="PLAIN",
                response=f"\0{url.user}\0{url.password}",
                locale="en_US",
            ),
            channel=0,
        )
        tune = self.wait_for(commands.Connection.Tune)
        if tune.frame_max:
            self.frame_max = min(self.frame_max, tune.frame_max)
        # Heartbeat 0: idle benchmark connections must not need a timer thread.
        self.send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max or 2047, frame_max=self.frame_max, heartbeat=0
            ),
            commands.Connection.Open(virtual_host=url.vhost),
            channel=0,
        )
        self.wait_for(commands.Connection.OpenOk)

    # -- convenience methods

    def queue_declare(
        self, queue: str, *, durable: bool = False, passive: bool = False, auto_delete: bool = False
    ) -> Any:
        return self.rpc(
            commands.Queue.Declare(
                queue=queue, durable=durable, passive=passive, auto_delete=auto_delete
            ),
            commands.Queue.DeclareOk,
        )

    def message_count(self, queue: str) -> int:
        return int(self.queue_declare(queue, passive=True).message_count)

    def queue_delete(self, queue: str) -> None:
        self.rpc(commands.Queue.Delete(queue=queue), commands.Queue.DeleteOk)

    def exchange_declare(self, exchange: str, exchange_type: str) -> None:
        self.rpc(
            commands.Exchange.Declare(exchange=exchange, exchange_type=exchange_type),
            commands.Exchange.DeclareOk,
        )

    def exchange_delete(self, exchange: str) -> None:
        self.rpc(commands.Exchange.Delete(exchange=exchange), commands.Exchange.DeleteOk)

    def bind_many(self, bindings: list[tuple[str, str, str]], chunk: int = 1000) -> None:
        """Queue.Bind (queue, exchange, key) pipelined `chunk` at a time.

        One round trip per bind would make 10,000 bindings take seconds of
        pure latency; pipelining keeps set-up short without nowait (so errors
        are still seen).
        """
        for start in range(0, len(bindings), chunk):
            part = bindings[start : start + chunk]
            self.send(
                *(commands.Queue.Bind(queue=q, exchange=x, routing_key=k) for q, x, k in part)
            )
            for _ in part:
                self.wait_for(commands.Queue.BindOk)

    def sync(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Round trip on the channel, after everything sent before it.

        Without it, closing right after a burst of unconfirmed publishes can
        lose the tail: a broker still working through seconds of buffered
        publishes does not answer Connection.Close in time, we drop the socket,
        and it discards what it had not processed yet.  Basic.Qos is harmless
        on a publishing channel and every broker answers it in order.
        """
        self.sock.settimeout(timeout)
        try:
            self.rpc(commands.Basic.Qos(prefetch_count=0), commands.Basic.QosOk)
        finally:
            self.sock.settimeout(SOCKET_TIMEOUT)

    def confirm_select(self) -> None:
        self.rpc(commands.Confirm.Select(), commands.Confirm.SelectOk)

    def consume(self, queue: str, prefetch: int, no_ack: bool = False) -> None:
        self.rpc(commands.Basic.Qos(prefetch_count=prefetch), commands.Basic.QosOk)
        self.rpc(commands.Basic.Consume(queue=queue, no_ack=no_ack), commands.Basic.ConsumeOk)

    def close(self, timeout: float = 2.0) -> None:
        """Polite Connection.Close (so brokers log no error), then drop the socket."""
        try:
            self.sock.settimeout(timeout)
            self.send(
                commands.Connection.Close(
                    reply_code=200, reply_text="bye", class_id=0, method_id=0
                ),
                channel=0,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                _, value = self.read_frame()
                if isinstance(value, commands.Connection.CloseOk):
                    break
        except (OSError, AmqpError, ValueError):
            pass
        finally:
            self.sock.close()


# ------------------------------------------------------------------ hot paths


def encode_publish(
    exchange: str, routing_key: str, body: bytes, *, channel: int = 1, persistent: bool = False
) -> bytes:
    """One Basic.Publish + ContentHeader + body frame(s), ready to be sent (or repeated).

    Bodies larger than a frame are split into frames of at most ``BODY_FRAME_MAX`` bytes
    (RabbitMQ's and amqpd's default frame_max, 128 KiB, less the frame's own 8 bytes).
    """
    props = commands.Basic.Properties(delivery_mode=2) if persistent else None
    parts = [
        frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel),
        frame.marshal(header.ContentHeader(0, len(body), props), channel),
    ]
    parts.extend(
        frame.marshal(pbody.ContentBody(body[start : start + BODY_FRAME_MAX]), channel)
        for start in range(0, len(body), BODY_FRAME_MAX)
    )
    return b"".join(parts)


def encode_publish_prefix(
    exchange: str, routing_key: str, body_size: int, channel: int = 1
) -> bytes:
    """Publish + header + body frame header: append body bytes and FRAME_END."""
    return (
        frame.marshal(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel)
        + frame.marshal(header.ContentHeader(0, body_size, None), channel)
        + FRAME_HDR.pack(FRAME_BODY, channel, body_size)
    )


def broker_error(buf: bytearray, pos: int, end: int) -> AmqpError:
    _, _, value = frame.unmarshal(bytes(buf[pos:end]))
    return AmqpError(f"{value.name}: {value.reply_code} {value.reply_text}")


def scan_deliveries(buf: bytearray, tags: list[int], stamps: list[int] | None) -> int:
    """Scan the complete frames in `buf`; return how many bytes were consumed.

    Appends each Basic.Deliver's delivery tag to `tags` and, if `stamps` is a
    list, the 8-byte timestamp that starts each body.  Nothing else is decoded:
    this loop is the consumer's whole per-message cost.
    """
    unpack_hdr = FRAME_HDR.unpack_from
    unpack_u32 = U32.unpack_from
    unpack_u64 = U64.unpack_from
    pos, n = 0, len(buf)
    while n - pos >= 8:
        ftype, _channel, size = unpack_hdr(buf, pos)
        end = pos + size + 8
        if end > n:
            break
        if ftype == FRAME_METHOD:
            method = unpack_u32(buf, pos + 7)[0]
            if method == DELIVER:
                # payload: class, method, consumer-tag shortstr, delivery-tag u64
                tags.append(unpack_u64(buf, pos + 12 + buf[pos + 11])[0])
            elif method in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                raise broker_error(buf, pos, end)
        elif ftype == FRAME_BODY and stamps is not None:
            stamps.append(unpack_u64(buf, pos + 7)[0])
        pos = end
    return pos


def scan_confirms(buf: bytearray, tracker: ConfirmTracker) -> int:
    """Feed Basic.Ack/Nack frames in `buf` to `tracker`; return bytes consumed."""
    unpack_hdr = FRAME_HDR.unpack_from
    pos, n = 0, len(buf)
    while n - pos >= 8:
        ftype, _channel, size = unpack_hdr(buf, pos)
        end = pos + size + 8
        if end > n:
            break
        if ftype == FRAME_METHOD:
            method = U32.unpack_from(buf, pos + 7)[0]
            if method in (BASIC_ACK, BASIC_NACK):
                tag = U64.unpack_from(buf, pos + 11)[0]
                tracker.confirm(tag, bool(buf[pos + 19] & 1), method == BASIC_NACK)
            elif method in (CONNECTION_CLOSE, CHANNEL_CLOSE):
                raise broker_error(buf, pos, end)
        pos = end
    return pos


def encode_acks(channel: int, tags: list[int]) -> bytes:
    """Single (multiple=False) Basic.Ack per tag, concatenated for one send."""
    pack = ACK_FRAME.pack
    return b"".join([pack(FRAME_METHOD, channel, 13, BASIC_ACK, t, 0, 0xCE) for t in tags])


@dataclass
class ConfirmTracker:
    """Counts confirmed publishes; handles multiple and out-of-order acks."""

    floor: int = 0  # every tag <= floor is settled
    above: set[int] = field(default_factory=set)  # settled tags > floor
    settled: int = 0
    nacked: int = 0

    def confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        before = self.settled
        if multiple:
            if tag > self.floor:
                inside = sum(1 for t in self.above if t <= tag)
                self.settled += tag - self.floor - inside
                self.above = {t for t in self.above if t > tag}
                self.floor = tag
        elif tag > self.floor and tag not in self.above:
            self.above.add(tag)
            self.settled += 1
        # In-order single acks (the usual case) keep `above` empty.
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.remove(self.floor)
        if nack:
            self.nacked += self.settled - before


def drain_socket(sock: socket.socket, buf: bytearray) -> None:
    """Read whatever is already waiting, without blocking; raise on broker Close."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("broker closed the TCP connection")
            buf += data
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(SOCKET_TIMEOUT)
    # Skip frames (Connection.Blocked etc.) but surface a Close.
    used = scan_deliveries(buf, [], None)
    del buf[:used]


# -------------------------------------------------------------------- workers


def cpu_seconds() -> float:
    """User+system CPU of this process (all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Worker:
    """A unit of load run in its own forked process.

    `setup` (connect, declare, consume) happens before the start barrier and is
    not timed; `run` is the timed phase and returns a result dict.
    """

    name = "worker"

    def setup(self) -> None:
        """Connect and prepare; not timed."""

    def run(self, t0: float) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections after the timed phase."""


@dataclass
class Publisher(Worker):
    """Publishes one pre-encoded message as fast as the socket takes it.

    Stops at `limit` messages or `duration` seconds after the start, whichever
    comes first.  With `window` > 0 the channel is in confirm mode and at most
    `window` messages are unconfirmed at any time; the run ends when all are
    confirmed.  `final` (unconfirmed mode only) is sent once at the end and not
    counted: an end marker whose arrival proves everything before was routed.
    """

    url: AmqpUrl
    exchange: str
    routing_keys: list[str]
    body: bytes
    duration: float
    limit: int | None = None
    window: int = 0
    persistent: bool = False
    batch: int = 100
    final: bytes = b""
    # Random bodies of len(body), different in each message of a batch: a store that shares
    # what consecutive messages have in common (amqpd's stream chunks) would otherwise
    # measure how well it compresses one repeated body.
    distinct_bodies: bool = False
    name: str = "publisher"
    conn: Connection | None = None
    batch_buf: bytes = b""
    msgs: list[bytes] = field(default_factory=list)

    def setup(self) -> None:
        self.conn = Connection(self.url)
        if self.window:
            self.conn.confirm_select()
            self.batch = max(1, min(self.batch, self.window // 10))
        # Cycling through several routing keys (topic) inside one batch keeps
        # the hot path a single sendall of a pre-built buffer.
        msgs = [
            encode_publish(self.exchange, k, self.body, persistent=self.persistent)
            for k in self.routing_keys
        ]
        per_batch = max(self.batch, len(msgs))
        if self.distinct_bodies:
            msgs = [encode_publish(self.exchange, self.routing_keys[i % len(self.routing_keys)],
                                   os.urandom(len(self.body)), persistent=self.persistent)
                    for i in range(per_batch)]
        self.batch_buf = b"".join(msgs[i % len(msgs)] for i in range(per_batch))
        self.batch = per_batch
        self.msgs = msgs

    def _tail(self, count: int) -> bytes:
        return b"".join(self.msgs[i % len(self.msgs)] for i in range(count))

    def run(self, t0: float) -> dict[str, Any]:
        assert self.conn is not None
        if self.window:
            return self._run_confirmed(t0)
        return self._run_unconfirmed(t0)

    def _run_unconfirmed(self, t0: float) -> dict[str, Any]:
        assert self.conn is not None
        sock, deadline, limit = self.conn.sock, t0 + self.duration, self.limit
        sent, batch, buf, rounds = 0, self.batch, self.batch_buf, 0
        while limit is None or sent < limit:
            if limit is not None and limit - sent < batch:
                buf, batch = self._tail(limit - sent), limit - sent
            sock.sendall(buf)
            sent += batch
            rounds += 1
            if time.monotonic() >= deadline:
                break
            if rounds % 64 == 0:  # notice a channel error early instead of at the end
                drain_socket(sock, self.conn.buf)
        end = time.monotonic()
        if self.final:
            sock.sendall(self.final)
        self.conn.sync()
        return {"count": sent, "end": end}

    def _run_confirmed(self, t0: float) -> dict[str, Any]:
        assert self.conn is not None
        sock, buf, deadline, limit = self.conn.sock, self.conn.buf, t0 + self.duration, self.limit
        tracker, sent, window = ConfirmTracker(), 0, self.window
        stopping = False
        while True:
            if not stopping:
                stopping = time.monotonic() >= deadline or (limit is not None and sent >= limit)
            if stopping and tracker.settled >= sent:
                break
            room = window - (sent - tracker.settled)
            if not stopping and room >= self.batch:
                count = self.batch if limit is None else min(self.batch, limit - sent)
                sock.sendall(self.batch_buf if count == self.batch else self._tail(count))
                sent += count
                continue
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("broker closed the TCP connection")
            buf += data
            used = scan_confirms(buf, tracker)
            del buf[:used]
        return {"count": sent, "end": time.monotonic(), "nacked": tracker.nacked}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class PacedPublisher(Worker):
    """Open loop: message i is due at t0 + i / rate and carries that *scheduled* time.

    The body starts with the scheduled CLOCK_MONOTONIC time in ns (the clock is shared by
    every process on the machine), so the consumer's receive time minus the stamp is the
    latency a user would see: when the broker, or this process's socket under TCP
    backpressure, falls behind, the late messages are charged their whole wait instead of
    being sent later with a fresh stamp (no coordinated omission).
    """

    url: AmqpUrl
    queue: str
    body_size: int
    rate: float
    duration: float
    name: str = "paced-publisher"
    conn: Connection | None = None
    prefix: bytes = b""
    tail: bytes = b""

    def setup(self) -> None:
        self.conn = Connection(self.url)
        self.prefix = encode_publish_prefix("", self.queue, self.body_size)
        self.tail = bytes(self.body_size - 8) + FRAME_END

    def run(self, t0: float) -> dict[str, Any]:
        assert self.conn is not None
        sock, prefix, tail, pack = self.conn.sock, self.prefix, self.tail, U64.pack
        end, sent = t0 + self.duration, 0
        t0_ns, interval_ns = int(t0 * 1e9), 1e9 / self.rate
        late_sends = 0
        # Sleep until the next message is due, then send everything that is due (message i
        # is due at t0 + i / rate): no busy loop, and the sleep's own overshoot (tens of
        # microseconds) is charged to the broker like any other delay, the same for each.
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - t0) * self.rate) + 1 - sent
            if due <= 0:
                time.sleep(max(0.0, t0 + sent / self.rate - now))
                continue
            if due > 8:
                late_sends += 1  # this process fell behind its schedule (the stamps still hold)
            sock.sendall(
                b"".join(
                    [prefix + pack(t0_ns + int(i * interval_ns)) + tail
                     for i in range(sent, sent + due)]
                )
            )
            sent += due
        return {"count": sent, "end": time.monotonic(), "late_sends": late_sends}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class PairPublisher(Worker):
    """Publishes as fast as the sockets take it on several connections, one queue each.

    The sockets are non-blocking and served in turn, so a connection the broker holds back
    (flow control, TCP backpressure) does not stop the others: each producer of a
    producer/consumer pair behaves as if it had a process of its own.
    """

    url: AmqpUrl
    queues: list[str]
    body: bytes
    duration: float
    batch: int = 100
    name: str = "publisher"
    conns: list[Connection] = field(default_factory=list)
    batch_bufs: list[bytes] = field(default_factory=list)

    def setup(self) -> None:
        self.conns = [Connection(self.url) for _ in self.queues]
        self.batch_bufs = [encode_publish("", q, self.body) * self.batch for q in self.queues]

    def run(self, t0: float) -> dict[str, Any]:
        deadline, sent = t0 + self.duration, 0
        selector = selectors.DefaultSelector()
        pending: dict[int, memoryview] = {}
        for index, conn in enumerate(self.conns):
            conn.sock.setblocking(False)
            selector.register(conn.sock, selectors.EVENT_WRITE, index)
            pending[index] = memoryview(self.batch_bufs[index])
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                index = key.data
                view = pending[index]
                try:
                    written = self.conns[index].sock.send(view)
                except BlockingIOError:
                    continue
                view = view[written:]
                if not view:
                    sent += self.batch
                    view = memoryview(self.batch_bufs[index])
                pending[index] = view
        selector.close()
        end = time.monotonic()
        for index, conn in enumerate(self.conns):
            conn.sock.settimeout(SOCKET_TIMEOUT)
            if len(pending[index]) != len(self.batch_bufs[index]):
                conn.sock.sendall(pending[index])  # finish the batch in flight: whole frames
                sent += self.batch
        for conn in self.conns:
            conn.sync()
        return {"count": sent, "end": end}

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


@dataclass
class Consumer(Worker):
    """Consumes from one or more queues (one connection each) with manual acks.

    Every delivery is acked individually (multiple=False), like RabbitMQ's
    perf-test, but the acks for everything read by one recv() go out in one
    send.  Stops after `duration` seconds, once `expect` deliveries have been
    seen, or when `stop_idle` seconds pass without a delivery (drained queue).
    """

    url: AmqpUrl
    queues: list[str]
    prefetch: int
    duration: float
    expect: int | None = None
    stamps: bool = False
    warmup: float = 0.0
    stop_idle: float | None = None
    name: str = "consumer"
    conns: list[Connection] = field(default_factory=list)

    def setup(self) -> None:
        self.conns = [Connection(self.url) for _ in self.queues]
        for conn, queue in zip(self.conns, self.queues, strict=True):
            conn.consume(queue, self.prefetch)

    def run(self, t0: float) -> dict[str, Any]:
        selector = selectors.DefaultSelector()
        for conn in self.conns:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
        deadline, last = t0 + self.duration, t0
        latencies: list[int] | None = [] if self.stamps else None
        skip_before = time.monotonic_ns() + int(self.warmup * 1e9)
        # Deliveries may have arrived in the same read as Basic.ConsumeOk; with
        # the prefetch window full, waiting for the socket first would deadlock.
        count = sum(
            self._process(c, latencies, skip_before, time.monotonic_ns()) for c in self.conns
        )
        while True:
            now = time.monotonic()
            if now >= deadline or (self.expect is not None and count >= self.expect):
                break
            if self.stop_idle is not None and now - last > self.stop_idle:
                break
            for key, _ in selector.select(min(0.2, deadline - now)):
                got = self._service(key.data, latencies, skip_before)
                if got:
                    count += got
                    last = time.monotonic()
        selector.close()
        result: dict[str, Any] = {"count": count, "end": last}
        if latencies is not None:
            result["latencies_ns"] = latencies
        return result

    def _service(self, conn: Connection, latencies: list[int] | None, skip_before: int) -> int:
        data = conn.sock.recv(RECV_SIZE)
        now_ns = time.monotonic_ns()  # one receive time for everything in this read
        if not data:
            raise ConnectionError("broker closed the TCP connection")
        conn.buf += data
        return self._process(conn, latencies, skip_before, now_ns)

    @staticmethod
    def _process(
        conn: Connection, latencies: list[int] | None, skip_before: int, now_ns: int
    ) -> int:
        """Ack every complete delivery in conn.buf; return how many there were."""
        buf = conn.buf
        tags: list[int] = []
        stamps: list[int] | None = [] if latencies is not None else None
        used = scan_deliveries(buf, tags, stamps)
        del buf[:used]
        if tags:
            conn.sock.sendall(encode_acks(conn.channel, tags))
        if stamps and latencies is not None:
            latencies.extend(now_ns - s for s in stamps if s >= skip_before)
        return len(tags)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


# ------------------------------------------------------------------- the fleet


def _child_main(worker: Worker, barrier: Any, pipe: mpc.Connection, cap: float) -> None:
    # If the parent dies or the broker wedges, SIGALRM's default action ends us.
    signal.alarm(max(1, int(cap) + 5))
    try:
        worker.setup()
    except BaseException as exc:
        barrier.abort()
        pipe.send({"name": worker.name, "error": f"setup: {exc!r}"})
        return
    try:
        barrier.wait()
        t0 = time.monotonic()
        cpu0 = cpu_seconds()
        result = worker.run(t0)
        result.update(name=worker.name, start=t0, cpu=cpu_seconds() - cpu0)
        worker.close()
    except BaseException as exc:
        result = {"name": worker.name, "error": f"{exc!r}", "trace": traceback.format_exc(limit=3)}
    pipe.send(result)


class Fleet:
    """Forked worker processes that start their timed phase together."""

    def __init__(self, workers: list[Worker], cap: float) -> None:
        self.workers = workers
        self.cap = cap
        self.ctx = mp.get_context("fork")
        self.barrier = self.ctx.Barrier(len(workers) + 1, timeout=cap)
        self.procs: list[Any] = []
        self.pipes: list[mpc.Connection] = []

    def start(self) -> float:
        """Fork, wait until every worker is set up, release them; return t0."""
        for worker in self.workers:
            reader, writer = self.ctx.Pipe(duplex=False)
            proc = self.ctx.Process(
                target=_child_main, args=(worker, self.barrier, writer, self.cap), daemon=True
            )
            proc.start()
            writer.close()
            self.procs.append(proc)
            self.pipes.append(reader)
        try:
            self.barrier.wait()
        except Exception as exc:  # BrokenBarrierError: some worker failed its setup
            errors = self.collect(timeout=5.0, allow_errors=True)
            raise RuntimeError(f"worker setup failed: {errors}") from exc
        return time.monotonic()

    def collect(self, timeout: float, allow_errors: bool = False) -> list[dict[str, Any]]:
        """Results of all workers (in worker order); raise on a worker error."""
        results: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        pending = dict(enumerate(self.pipes))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for reader in mpc.wait(list(pending.values()), timeout=remaining):
                index = next(i for i, r in pending.items() if r is reader)
                try:
                    results[index] = reader.recv()  # type: ignore[union-attr]
                except EOFError:
                    results[index] = {"error": "worker exited without a result"}
                del pending[index]
        if pending and not allow_errors:
            raise TimeoutError(f"{len(pending)} worker(s) gave no result in {timeout:.0f}s")
        errors = [r for r in results.values() if "error" in r]
        if errors and not allow_errors:
            raise RuntimeError(f"worker failed: {errors[0]}")
        return [results[i] for i in sorted(results)]

    def stop(self) -> None:
        """Reap our own worker processes (terminate any that are still running)."""
        for proc in self.procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self.pipes:
            pipe.close()
