"""The I/O shell: TCP listener, one reader and one writer task per connection, shutdown.

All protocol and broker logic is in the sans-IO :class:`~amqpd.session.connection.Connection`; this
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
import gc
import logging
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream

from amqpd.access.tls import peer_common_name, server_context
from amqpd.broker.broker import Broker
from amqpd.broker.paging import FILENAME as PAGING_FILENAME
from amqpd.broker.persistence import PersistentJournal, recover
from amqpd.protocol.constants import CONNECTION_FORCED
from amqpd.session.connection import Connection
from amqpd.store import Store, StoreError, open_store

LOGGER = logging.getLogger(__name__)

_RECEIVE_SIZE = 64 * 1024
LIVE_TOPOLOGY_FILENAME = "topology.live.yaml"
_ACCEPT_ERRORS_BACKOFF = 0.1
# Seconds a publisher may be held back (per read) while consumers of a queue it feeds
# catch up with its backlog.
_FLOW_MAX_PAUSE = 0.002
_GC_THRESHOLDS = (100_000, 50, 100)


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
                if connection.flow_queues:
                    # Flow control: give the consumers of the queues this publisher is
                    # outrunning the CPU until they catch up, for a few ms at most -- a
                    # stalled consumer must not stop publishing (buffering comes first).
                    deadline = time.monotonic() + _FLOW_MAX_PAUSE
                    while connection.flow_blocked() and time.monotonic() < deadline:
                        await anyio.lowlevel.checkpoint()
                    connection.flow_queues.clear()
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
        while True:
            if not connection.out:
                if connection.finished:
                    return
                self.writable = anyio.Event()
                await self.writable.wait()
                continue
            data = connection.data_to_send()
            # Output counts against the high watermark until the socket took it, so a slow
            # reader bounds what its consumers are sent (queued + in flight <= high).
            connection.in_flight = len(data)
            try:
                await send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                connection.connection_lost()
                return
            finally:
                connection.in_flight = 0
            if connection.below_low_watermark:
                self.drained.set()
                if connection.held_back:
                    # The core refused deliveries while the output was full.
                    connection.on_drained()


class Server:
    """Accepts connections and owns every session."""

    def __init__(
        self,
        broker: Broker,
        on_listening: Callable[[str, int], None] | None = None,
        store: Store | None = None,
    ):
        self.broker = broker
        self.store = store
        self.sessions: set[Session] = set()
        self.on_listening = on_listening
        self._stopping = False
        self._sessions_changed = anyio.Event()
        self._alarm_event = anyio.Event()
        self._live_topology_version = -1
        broker.add_alarm_listener(self._on_alarm)
        self.bound: tuple[str, int] | None = None
        self.tls_bound: tuple[str, int] | None = None
        self.on_tls_listening: Callable[[str, int], None] | None = None

    async def _listen_tls(self) -> tuple[MultiListener[SocketStream], ssl.SSLContext] | None:
        """The amqps listener (plain TCP; each connection is wrapped after accept)."""
        settings = self.broker.settings
        if settings.tls_port is None:
            return None
        context = server_context(settings)
        listener = await anyio.create_tcp_listener(
            local_host=settings.tls_host or settings.host, local_port=settings.tls_port,
            reuse_port=False,
        )
        address = listener.extra(SocketAttribute.local_address)
        assert isinstance(address, tuple)
        self.tls_bound = (str(address[0]), int(address[1]))
        if self.on_tls_listening is not None:
            self.on_tls_listening(*self.tls_bound)
        return listener, context

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
        tls = await self._listen_tls()
        async with anyio.create_task_group() as task_group:
            for socket_listener in listener.listeners:
                assert isinstance(socket_listener, SocketListener)
                task_group.start_soon(self._accept, socket_listener, task_group)
            if tls is not None:
                for socket_listener in tls[0].listeners:
                    assert isinstance(socket_listener, SocketListener)
                    task_group.start_soon(self._accept, socket_listener, task_group, tls[1])
            task_group.start_soon(self._tick)
            if self.store is not None:
                task_group.start_soon(self._flush, self.store)
            await self._wait_for_signal()
            if tls is not None:
                await tls[0].aclose()
            await self.shutdown(listener)
            task_group.cancel_scope.cancel()
        if self.store is not None:
            await self._commit_pending(self.store)

    async def _wait_for_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    from amqpd.topology.reload import reload

                    LOGGER.info("received SIGHUP, reloading the configuration")
                    reload(self.broker)  # logs and never raises; all or nothing
                    continue
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

    async def _accept(
        self,
        listener: SocketListener,
        task_group: anyio.abc.TaskGroup,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
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
            task_group.start_soon(self._handle, stream, ssl_context)

    async def _tls_handshake(
        self, stream: SocketStream, context: ssl.SSLContext, peer: object
    ) -> tuple[TLSStream, str | None] | None:
        """Wrap an accepted socket in TLS, with the client certificate's CN if any; None
        (socket closed) when the handshake fails."""
        try:
            with anyio.fail_after(self.broker.settings.tls_handshake_timeout):
                wrapped = await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context, standard_compatible=False
                )
        except Exception as exc:  # timeouts, bad certificates, plain AMQP on the TLS port
            LOGGER.info("TLS handshake with %s failed: %s", peer, exc)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()
            return None
        return wrapped, peer_common_name(wrapped.extra(TLSAttribute.ssl_object, None))

    async def _handle(
        self, stream: SocketStream, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # Nothing a single connection does may take the server down with it.
        try:
            peer = stream.extra(SocketAttribute.remote_address)
        except Exception:  # a peer that is already gone has no address (AttributeError)
            peer = None
        peer_address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        connection_stream: SocketStream | TLSStream = stream
        peer_cn: str | None = None
        if ssl_context is not None:
            wrapped = await self._tls_handshake(stream, ssl_context, peer_address)
            if wrapped is None:
                return
            connection_stream, peer_cn = wrapped
        session = Session(
            Connection(self.broker, peer_address, tls_peer_cn=peer_cn),
            connection_stream,
            self._alarm_cleared,
        )
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:
            LOGGER.exception("connection %s failed", peer_address)
        finally:
            self.sessions.discard(session)
            self._sessions_changed.set()

    async def _flush(self, store: Store) -> None:
        """Group commit: everything the core wrote while the last commit ran goes in the
        next one, in a worker thread, then confirms and commit-oks waiting for it go out."""
        journal = self.broker.journal
        assert isinstance(journal, PersistentJournal)
        wanted = anyio.Event()

        def wake() -> None:
            wanted.set()

        journal.wakeup = wake
        while True:
            if not journal.pending:
                wanted = anyio.Event()
                await wanted.wait()
                continue
            await self._commit_pending(store)

    async def _commit_pending(self, store: Store) -> None:
        journal = self.broker.journal
        if not isinstance(journal, PersistentJournal) or not journal.pending:
            return
        # Shielded: a batch taken from the journal must reach the disk even when shutdown
        # cancels the flusher right here, or what it held would be lost.
        with anyio.CancelScope(shield=True):
            number, batch = journal.take_batch()
            while batch:
                try:
                    await anyio.to_thread.run_sync(store.commit, batch)
                    break
                except StoreError:
                    # Nothing of the batch was applied (a full disk, say). Retrying the same
                    # batch keeps the promise that a confirmed message is on disk.
                    LOGGER.exception("store commit failed; retrying in 1 s")
                    await anyio.sleep(1)
            journal.committed_through(number)

    async def _write_live_topology(self) -> None:
        """Keep ``<data_dir>/topology.live.yaml`` current (at most once a second), so that
        ``amqpd export-topology`` can show the live topology while this broker holds the
        store. Written to a temporary file and renamed: readers never see half a file."""
        version = self.broker.journal.definitions_version
        if version == self._live_topology_version:
            return
        self._live_topology_version = version
        from amqpd.topology.export import export_topology

        text = export_topology(self.broker)
        path = Path(self.broker.settings.data_dir) / LIVE_TOPOLOGY_FILENAME

        def write() -> None:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(path)

        try:
            await anyio.to_thread.run_sync(write)
        except OSError as exc:
            LOGGER.warning("cannot write %s: %s", path, exc)

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
            await self._write_live_topology()
            for session in list(self.sessions):
                connection = session.connection
                connection.tick()
                if connection.out or connection.finished:
                    session.wake()


def open_and_recover(broker: Broker) -> Store:
    """Open the store in the data directory and rebuild what it holds.

    Raises:
        StoreError: with a message naming the file when it cannot be used.
    """
    data_dir = Path(broker.settings.data_dir)
    store = open_store(data_dir)
    broker.pager.path = data_dir / PAGING_FILENAME
    snapshot = store.load(with_entries=False)
    journal = PersistentJournal(store, snapshot.next_message_id)
    broker.use_journal(journal)
    started = time.monotonic()
    count = recover(broker, journal, snapshot)
    LOGGER.info("recovered %d messages in %.2f s", count, time.monotonic() - started)
    return store


def run(broker: Broker, configure: Callable[[Broker], object] | None = None) -> int:
    """Run the broker until SIGTERM/SIGINT; returns the process exit code.

    ``configure`` (amqpd.topology.apply.configure_broker) applies the configured users,
    vhosts and topology after the store is recovered; its ValueError stops start-up.
    """

    def announce(host: str, port: int) -> None:
        # Scripts and test fixtures wait for exactly this line.
        print(f"amqpd listening on {host}:{port}", flush=True)  # noqa: T201

    try:
        store = open_and_recover(broker)
    except StoreError as exc:
        print(f"amqpd: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    if configure is not None:
        try:
            configure(broker)
        except ValueError as exc:  # amqpd.config.nodes.ConfigError: FILE:LINE:COLUMN: ...
            print(exc, file=sys.stderr)  # noqa: T201
            store.close()
            return 1
    server = Server(broker, announce, store)
    # A broker holds millions of long-lived, acyclic objects (queued messages): with the
    # default thresholds the cyclic collector rescans them all the time (measured: 14% of
    # the CPU of an end-to-end run). Collect young objects far less often instead.
    gc.set_threshold(*_GC_THRESHOLDS)

    def announce_tls(host: str, port: int) -> None:
        print(f"amqpd listening on {host}:{port} (tls)", flush=True)  # noqa: T201

    server.on_tls_listening = announce_tls
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
    finally:
        store.close()
        broker.pager.close()
    return 0
