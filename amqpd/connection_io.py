"""A connection's socket: its reader and writer tasks (the I/O half of a connection).

A read is handed to the sans-IO :class:`~amqpd.session.connection.Connection`; whatever that
read made the core queue, for this connection or any other (deliveries to consumers, confirms,
replies), is written before the reader awaits again: each connection that got output is
written once, straight to its transport when nothing of it is being sent (one ``writelines``
per connection per read, so frames still leave together). Its writer task is woken only for
what is left: waiting for the drain, the watermarks, the close. TLS streams, output queued
outside a read (timers, the group commit, the management API) and output behind a send still
in progress go through the writer task alone.

Backpressure: a connection whose own output is above its high watermark stops reading (TCP
then pushes back on the client); consumers on a congested connection get nothing more until
its writer drains it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
from anyio.abc import SocketStream
from anyio.streams.tls import TLSStream

from amqpd import listeners
from amqpd.listeners import send_buffers
from amqpd.session import trace
from amqpd.session.connection import Connection, ConnectionState
from amqpd.session.trace import TRACING

_RECEIVE_SIZE = 64 * 1024
# While a large frame (16 KiB+) is incomplete, reads may be up to this size (uvloop reads
# 256,000 bytes at most): a read cut in two is a copy of its tail, and a large body takes
# fewer loop turns. Small frames keep 64 KiB reads (larger batches of publishes per read
# slowed end to end).
_RECEIVE_SIZE_LARGE = 1024 * 1024
# Seconds a publisher may be held back (per read) while consumers of a queue it feeds
# catch up with its backlog.
_FLOW_MAX_PAUSE = 0.002
# Connection timers run in this many 0.1 s rounds, a slice of the connections each.
TICK_ROUNDS = 5
_TICK_SLOTS = itertools.count()


class WokenSessions:
    """The sessions the core queued output for while one read was processed: each is
    written once, when the read is done, in the reader's turn of the event loop rather than
    its writer task's (a wake-up, a future callback and a task step per connection)."""

    def __init__(self) -> None:
        self.collecting = False
        self.sessions: list[Session] = []

    def write(self) -> None:
        sessions = self.sessions
        if sessions:
            self.sessions = []
            for session in sessions:
                session.write_now()


_BATCH = WokenSessions()


class Session:
    """A connection's socket plus the events that wake its writer and its reader; its
    output is written by whichever reader's read queued it, or else by its writer."""

    __slots__ = ("alarm_cleared", "batched", "connection", "drained", "finished_ticks",
                 "handshake", "scope", "sending", "stream", "tick_slot", "transport",
                 "writable")

    def __init__(
        self,
        connection: Connection,
        stream: SocketStream | TLSStream,
        alarm_cleared: Callable[[], Awaitable[None]],
    ):
        self.connection = connection
        self.stream = stream
        self.alarm_cleared = alarm_cleared
        self.writable = anyio.Event()
        self.drained = anyio.Event()
        self.scope: anyio.CancelScope | None = None
        self.finished_ticks = 0
        # Which of the five 0.1 s rounds ticks this connection (see Server._tick).
        self.tick_slot = next(_TICK_SLOTS) % TICK_ROUNDS
        # Its place among the sockets in the handshake, given back at connection.open-ok.
        self.handshake: listeners.HandshakeSlot | None = None
        # Plain TCP: output may be handed to the transport by a reader, not only the writer.
        self.transport = listeners.plain_transport(stream)
        self.batched = False  # in _BATCH.sessions, to be written when the read is processed
        self.sending = False  # the writer holds taken buffers or waits for the drain
        connection.wakeup = self.wake

    def wake(self) -> None:
        """Something was queued for the socket (called synchronously by the core)."""
        batch = _BATCH
        if batch.collecting:
            if not self.batched:
                self.batched = True
                batch.sessions.append(self)
        else:
            self.writable.set()

    def write_now(self) -> None:
        """Hand the output to the transport now if nothing is being sent: the transport
        writes what the socket takes at once and keeps the rest; the writer task is woken
        only for what remains to do (the drain, the watermarks, the close)."""
        self.batched = False
        connection = self.connection
        transport = self.transport
        if (transport is not None and not self.sending and connection.has_output
                and not transport.is_closing() and not transport.get_write_buffer_size()):
            buffers, size = connection.buffers_to_send()
            transport.writelines(buffers)
            if TRACING:
                trace.written(connection)
            if not (transport.get_write_buffer_size() or connection.held_back
                    or connection.finished):
                return
            connection.in_flight = size  # the writer waits for its drain
        self.writable.set()

    async def run(self) -> None:
        """Serve the connection until it is finished or the socket is gone."""
        connection = self.connection
        try:
            async with anyio.create_task_group() as task_group:
                self.scope = task_group.cancel_scope
                task_group.start_soon(self._read)
                await self._write()
                task_group.cancel_scope.cancel()
            if connection.drain_after_close:
                await self._drain_after_close()
        finally:
            connection.connection_lost()
            with anyio.CancelScope(shield=True), contextlib.suppress(
                OSError, anyio.BrokenResourceError
            ):
                await self.stream.aclose()

    def abort(self) -> None:
        """Stop the reader and writer now, even a writer blocked on a peer that does not
        read any more; the socket is then closed."""
        if self.scope is not None:
            self.scope.cancel()

    async def _drain_after_close(self) -> None:
        """The client closed the connection and close-ok is written: send FIN, then read
        and drop until the client closes its end (at most close_timeout). Closing at once,
        with frames the client sent after its connection.close still unread, would make the
        kernel answer with RST, and a client that had not read close-ok yet loses it."""
        stream = self.stream
        with anyio.move_on_after(self.connection.settings.close_timeout), \
                contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError,
                                    anyio.ClosedResourceError, OSError):
            with contextlib.suppress(NotImplementedError):
                await stream.send_eof()  # TLS cannot half-close: reading still avoids RST
            while True:
                await stream.receive(_RECEIVE_SIZE)

    async def _read(self) -> None:
        connection = self.connection
        receive = self.stream.receive
        try:
            broker = connection.broker
            while not connection.finished:
                data = await receive(_RECEIVE_SIZE_LARGE if connection.reader
                                     .pending_frame_size > 16384 else _RECEIVE_SIZE)
                if broker.alarms and connection.is_publisher:
                    # Memory or disk alarm: what a publisher sent waits, unprocessed, until
                    # both clear, and TCP pushes back; consumers' connections keep reading,
                    # so acks drain the queues.
                    await self.alarm_cleared()
                batch = _BATCH
                batch.collecting = True
                try:
                    connection.data_received(data)
                finally:
                    batch.collecting = False
                    batch.write()
                if self.handshake is not None and connection.state is ConnectionState.OPEN:
                    self.handshake.release()
                    self.handshake = None
                if connection.flow_queues:
                    # Flow control: give the consumers of the queues this publisher is
                    # outrunning the CPU until they catch up, for a few ms at most -- a
                    # stalled consumer must not stop publishing (buffering comes first).
                    deadline = time.monotonic() + _FLOW_MAX_PAUSE
                    while connection.flow_blocked() and time.monotonic() < deadline:
                        await anyio.lowlevel.checkpoint()
                    connection.flow_queues.clear()
                broker.check_memory()
                if connection.congested:
                    # Stop reading until our own output drains: TCP pushes back on the client.
                    self.drained = anyio.Event()
                    self.wake()
                    await self.drained.wait()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        connection.connection_lost()
        self.wake()

    async def _write(self) -> None:
        connection = self.connection
        stream = self.stream
        while True:
            if connection.has_output:
                buffers, connection.in_flight = connection.buffers_to_send()
            elif connection.in_flight:
                # write_now handed them to the transport (only the writer's own sends set
                # it otherwise, and clear it when done): wait for the drain only.
                buffers = []
            else:
                if connection.finished:
                    return
                self.writable = anyio.Event()
                await self.writable.wait()
                continue
            self.sending = True
            # Output counts against the high watermark until the socket took it, so a slow
            # reader bounds what its consumers are sent (queued + in flight <= high). Large
            # bodies are buffers of their own, written without a copy (session/output.py).
            try:
                await send_buffers(stream, buffers)
                if TRACING and buffers:
                    trace.written(connection)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                connection.connection_lost()
                return
            finally:
                connection.in_flight = 0
                self.sending = False
            if connection.below_low_watermark:
                self.drained.set()
                if connection.held_back:
                    # The core refused deliveries while the output was full.
                    connection.on_drained()
