"""The I/O shell: TCP listener, one reader and one writer task per connection, shutdown.

All protocol and broker logic is in the sans-IO :class:`~amqpd.connection.Connection`; this
module only moves bytes. Task budget: per connection the handler task reads and one
writer task writes; broker-wide there is one accept loop, one ticker (heartbeats and close
time-outs for every connection) and the signal watcher. Nothing is spawned per channel,
consumer, queue or message.

Backpressure: a connection whose own output is above its high watermark stops reading
(TCP then pushes back on the client); consumers on a congested connection get nothing
more until its writer drains it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from amqpd.broker import Broker
from amqpd.connection import Connection
from amqpd.protocol.constants import CONNECTION_FORCED

LOGGER = logging.getLogger(__name__)

_RECEIVE_SIZE = 256 * 1024
_ACCEPT_ERRORS_BACKOFF = 0.1


class Session:
    """A connection's socket plus the events that wake its writer and its reader."""

    __slots__ = ("alarm_cleared", "connection", "drained", "stream", "writable")

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
        connection.wakeup = self.wake

    def wake(self) -> None:
        """Something was queued for the socket (called synchronously by the core)."""
        self.writable.set()

    async def run(self) -> None:
        """Serve the connection until it is finished or the socket is gone."""
        connection = self.connection
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._read)
                await self._write()
                task_group.cancel_scope.cancel()
        finally:
            connection.connection_lost()
            with anyio.CancelScope(shield=True), contextlib.suppress(
                OSError, anyio.BrokenResourceError
            ):
                await self.stream.aclose()

    async def _read(self) -> None:
        connection = self.connection
        receive = self.stream.receive
        try:
            broker = connection.broker
            while not connection.finished:
                data = await receive(_RECEIVE_SIZE)
                connection.data_received(data)
                if broker.check_memory() and connection.is_publisher:
                    # Memory alarm: stop reading from publishers until it clears; consumers'
                    # connections keep reading, so acks drain the queues.
                    await self.alarm_cleared()
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
        send = self.stream.send
        high = connection.high_watermark
        while True:
            if not connection.out:
                if connection.finished:
                    return
                self.writable = anyio.Event()
                await self.writable.wait()
                continue
            data = connection.data_to_send()
            if len(data) >= high:
                # The core held deliveries back while the buffer was full; let it refill the
                # (now empty) buffer while this chunk goes out.
                connection.on_drained()
            self.drained.set()
            try:
                await send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                connection.connection_lost()
                return


class Server:
    """Accepts connections and owns every session."""

    def __init__(self, broker: Broker, on_listening: Callable[[str, int], None] | None = None):
        self.broker = broker
        self.sessions: set[Session] = set()
        self.on_listening = on_listening
        self._stopping = False
        self._sessions_changed = anyio.Event()
        self._alarm_event = anyio.Event()
        broker.alarm_listeners.append(self._on_alarm)
        self.bound: tuple[str, int] | None = None

    async def serve(self) -> None:
        """Listen, serve and return after a graceful shutdown (SIGTERM/SIGINT)."""
        settings = self.broker.settings
        listener = await anyio.create_tcp_listener(
            local_host=settings.host, local_port=settings.port, reuse_port=False
        )
        address = listener.extra(SocketAttribute.local_address)
        assert isinstance(address, tuple)
        host, port = str(address[0]), int(address[1])
        self.bound = (host, port)
        if self.on_listening is not None:
            self.on_listening(host, port)
        async with anyio.create_task_group() as task_group:
            for socket_listener in listener.listeners:
                assert isinstance(socket_listener, SocketListener)
                task_group.start_soon(self._accept, socket_listener, task_group)
            task_group.start_soon(self._tick)
            await self._wait_for_signal()
            await self.shutdown(listener)
            task_group.cancel_scope.cancel()

    async def _wait_for_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                LOGGER.info("received %s, shutting down", signal.Signals(signum).name)
                return

    async def shutdown(self, listener: MultiListener[SocketStream]) -> None:
        """Stop accepting, close every connection with 320, wait briefly for them to flush."""
        self._stopping = True
        await listener.aclose()
        for session in list(self.sessions):
            session.connection.close_by_server(CONNECTION_FORCED, "broker shutdown")
            session.wake()
        with anyio.move_on_after(self.broker.settings.close_timeout):
            while self.sessions:
                self._sessions_changed = anyio.Event()
                await self._sessions_changed.wait()

    async def _accept(self, listener: SocketListener, task_group: anyio.abc.TaskGroup) -> None:
        limit = self.broker.settings.max_connections
        while not self._stopping:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: back off instead of dying (trio's serve_listeners).
                LOGGER.warning("accept failed: %s; backing off", exc)
                await anyio.sleep(_ACCEPT_ERRORS_BACKOFF)
                continue
            if limit and len(self.sessions) >= limit:
                LOGGER.warning("connection limit %s reached; refusing a connection", limit)
                await stream.aclose()
                continue
            task_group.start_soon(self._handle, stream)

    async def _handle(self, stream: SocketStream) -> None:
        # Nothing a single connection does may take the server down with it.
        try:
            peer = stream.extra(SocketAttribute.remote_address)
        except Exception:  # a peer that is already gone has no address (AttributeError)
            peer = None
        peer_address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        session = Session(Connection(self.broker, peer_address), stream, self._alarm_cleared)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:
            LOGGER.exception("connection %s failed", peer_address)
        finally:
            self.sessions.discard(session)
            self._sessions_changed.set()

    def _on_alarm(self, raised: bool) -> None:
        if raised:
            self._alarm_event = anyio.Event()
        else:
            self._alarm_event.set()

    async def _alarm_cleared(self) -> None:
        while self.broker.memory_alarm:
            await self._alarm_event.wait()

    async def _tick(self) -> None:
        """Message TTLs every 0.1 s (LavinMQ's granularity); connection timers every 1 s."""
        rounds = 0
        while True:
            await anyio.sleep(0.1)
            self.broker.tick(time.monotonic())
            rounds += 1
            if rounds % 10:
                continue
            for session in list(self.sessions):
                connection = session.connection
                connection.tick()
                if connection.out or connection.finished:
                    session.wake()


def run(broker: Broker) -> int:
    """Run the broker until SIGTERM/SIGINT; returns the process exit code."""

    def announce(host: str, port: int) -> None:
        # Scripts and test fixtures wait for exactly this line.
        print(f"amqpd listening on {host}:{port}", flush=True)  # noqa: T201

    server = Server(broker, announce)
    backend_options: dict[str, object] = {}
    try:
        import uvloop  # noqa: F401

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        anyio.run(server.serve, backend="asyncio", backend_options=backend_options)
    except OSError as exc:
        message = f"amqpd: cannot listen on {broker.settings.host}:{broker.settings.port}: {exc}"
        print(message, file=sys.stderr)  # noqa: T201
        return 1
    return 0
