"""The I/O shell: TCP listener, the connections' sessions, shutdown.

All protocol and broker logic is in the sans-IO :class:`~amqpd.session.connection.Connection`; this
module only moves bytes. Task budget: per connection the handler task reads and one
writer task writes (``amqpd/connection_io.py``); broker-wide there is one accept loop, one
ticker (heartbeats and close time-outs for every connection) and the signal watcher. Nothing
is spawned per channel, consumer, queue or message.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSAttribute, TLSStream

from amqpd import listeners
from amqpd.access.tls import peer_common_name, server_context
from amqpd.admin.app import ManagementServer, open_management
from amqpd.admin.rates import Rates
from amqpd.admin.readmodel import Listener, LiveState
from amqpd.broker.broker import Broker
from amqpd.broker.paging import FILENAME as PAGING_FILENAME
from amqpd.broker.persistence import PersistentJournal, recover
from amqpd.connection_io import TICK_ROUNDS, Session
from amqpd.listeners import (
    addresses,
    host_port,
    raise_open_files_limit,
    tcp_listener,
)
from amqpd.metrics.app import PrometheusServer, open_prometheus
from amqpd.metrics.commits import CommitStats
from amqpd.protocol.constants import CONNECTION_FORCED
from amqpd.session.connection import Connection
from amqpd.store import Store, StoreError, StoreFullError, open_store
from amqpd.store.policy_file import FILENAME as POLICY_FILENAME
from amqpd.store.policy_file import read_policies
from amqpd.streams import install as install_streams
from amqpd.topology.access_file import FILENAME as ACCESS_FILENAME
from amqpd.topology.access_file import restore_access

LOGGER = logging.getLogger(__name__)

LIVE_TOPOLOGY_FILENAME = "topology.live.yaml"
_ACCEPT_ERRORS_BACKOFF = 0.1
_GC_THRESHOLDS = (100_000, 50, 100)
# Back-off of a commit that failed for lack of space: from 50 ms, doubling, up to 1 s (so
# confirms resume within a second once space is freed).
_FULL_RETRY_FIRST = 0.05
_FULL_RETRY_MAX = 1.0
# Connection ticks (0.5 s each) a finished connection may take to flush its last bytes before
# its socket is closed regardless: a dead peer that stopped reading would block the writer
# for ever.
_FINISHED_GRACE_TICKS = 4


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
        self.handshakes = listeners.HandshakeLimits(broker.settings.max_handshakes_per_address,
                                                    broker.settings.max_handshakes)
        self.bound: tuple[str, int] | None = None
        self.tls_bound: tuple[str, int] | None = None
        self.on_tls_listening: Callable[[str, int], None] | None = None
        self.on_management_listening: Callable[[str, int], None] | None = None
        self.on_prometheus_listening: Callable[[str, int], None] | None = None
        # Group-commit latency and fsyncs, read by the Prometheus metrics.
        self.commit_stats = CommitStats()

    async def _listen_tls(self) -> tuple[MultiListener[SocketStream], ssl.SSLContext] | None:
        """The amqps listener (plain TCP; each connection is wrapped after accept)."""
        settings = self.broker.settings
        if settings.tls_port is None:
            return None
        context = server_context(settings)
        listener = await tcp_listener(settings.tls_host or settings.host, settings.tls_port)
        bound = addresses(listener)
        self.tls_bound = bound[0]
        if self.on_tls_listening is not None:
            for host, port in bound:
                self.on_tls_listening(host, port)
        return listener, context

    async def serve(self) -> None:
        """Listen, serve and return after a graceful shutdown (SIGTERM/SIGINT)."""
        # The signals are caught before "listening" is announced: a supervisor (or a test)
        # that stops the broker right after that line must get the graceful shutdown, not
        # the default action of SIGTERM.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await self._serve(signals)

    async def _serve(self, signals: AsyncIterator[int]) -> None:
        settings = self.broker.settings
        listener = await tcp_listener(settings.host, settings.port)
        bound = addresses(listener)
        self.bound = bound[0]
        if self.on_listening is not None:
            for host, port in bound:  # IPv4 first: scripts read the first line
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
            management = self._management()
            if management is not None:
                task_group.start_soon(management.serve, self.on_management_listening)
            prometheus = self._prometheus()
            if prometheus is not None:
                task_group.start_soon(prometheus.serve, self.on_prometheus_listening)
            await self._wait_for_signal(signals)
            if management is not None:
                management.stop()
            if prometheus is not None:
                prometheus.stop()
            if tls is not None:
                await tls[0].aclose()
            await self.shutdown(listener)
            task_group.cancel_scope.cancel()
        if self.store is not None:
            await self._commit_pending(self.store)

    def _management(self) -> ManagementServer | None:
        """The management HTTP API over this server's broker and connections (None when
        switched off or its port cannot be used)."""
        assert self.bound is not None
        listeners = [Listener("amqp", *self.bound)]
        if self.tls_bound is not None:
            listeners.append(Listener("amqp/ssl", *self.tls_bound))
        state = LiveState(self.broker, lambda: [s.connection for s in self.sessions],
                          listeners, Rates(self.broker))
        settings = self.broker.settings
        return open_management(state, settings.management_host, settings.management_port)

    def _prometheus(self) -> PrometheusServer | None:
        """The Prometheus metrics listener over this server's broker and connections (None
        when switched off or its port cannot be used)."""
        assert self.bound is not None
        state = LiveState(self.broker, lambda: [s.connection for s in self.sessions],
                          [Listener("amqp", *self.bound)])
        settings = self.broker.settings
        return open_prometheus(state, settings.prometheus_host, settings.prometheus_port,
                               self.commit_stats)

    async def _wait_for_signal(self, signals: AsyncIterator[int]) -> None:
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
            slot = self.handshakes.admit(listeners.peer_host(stream))
            if slot is None:  # too many sockets in the handshake (logged by the limits)
                with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                    await stream.aclose()
                continue
            task_group.start_soon(self._handle, stream, ssl_context, slot)

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
        self, stream: SocketStream, ssl_context: ssl.SSLContext | None = None,
        handshake: listeners.HandshakeSlot | None = None,
    ) -> None:
        try:
            await self._serve_socket(stream, ssl_context, handshake)
        finally:
            if handshake is not None:  # the socket went before connection.open-ok
                handshake.release()

    async def _serve_socket(
        self, stream: SocketStream, ssl_context: ssl.SSLContext | None,
        handshake: listeners.HandshakeSlot | None,
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
        session.handshake = handshake
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
        broker = self.broker
        with anyio.CancelScope(shield=True):
            number, batch = journal.take_batch()
            started = time.monotonic()
            if broker.store_failure is not None:
                # Nothing more is written to a store whose write or fsync failed.
                journal.batch_lost(number)
                return
            delay, full_since = _FULL_RETRY_FIRST, 0.0
            while batch:
                try:
                    await anyio.to_thread.run_sync(store.commit, batch)
                    break
                except StoreFullError as exc:
                    # Nothing of the batch was applied: retrying the same batch keeps the
                    # promise that a confirmed message is on disk. Publishers are blocked
                    # (disk alarm) and confirms wait; one log line per state change.
                    if not full_since:
                        full_since = time.monotonic()
                        LOGGER.error("store commit failed: %s; retrying until there is space",
                                     exc)
                        broker.store_full(True)
                    if self._stopping:
                        LOGGER.error("shutting down with a batch the full disk refused: its "
                                     "publishes were never confirmed")
                        return
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _FULL_RETRY_MAX)
                except StoreError as exc:
                    # A failed write or fsync: the batch's fate on disk is unknown, and a
                    # retried fsync could report success for pages the kernel already
                    # dropped. Never retry: nack the batch, refuse persistent messages.
                    broker.fail_store(str(exc))
                    journal.batch_lost(number)
                    return
            if full_since:
                LOGGER.warning("store commit succeeded again after %.1f s",
                               time.monotonic() - full_since)
                broker.store_full(False)
            try:
                # Streams' logs (amqpd.streams) are fsync'd before the batch counts as
                # committed, so the confirms waiting for it cover their appends too.
                syncs = journal.prepare_external()
                for sync in syncs:
                    await anyio.to_thread.run_sync(sync)
            except OSError as exc:
                LOGGER.error("stream fsync failed: %s; the batch's publishes are nacked", exc)
                journal.batch_lost(number)
                return
            # One fsync per store commit (SQLite's synchronous=FULL), one per stream synced.
            self.commit_stats.observe(time.monotonic() - started, bool(batch) + len(syncs))
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

    def _on_alarm(self, alarms: frozenset[str]) -> None:
        if not alarms:
            self._alarm_event.set()
        elif self._alarm_event.is_set():
            # A second alarm while one is raised keeps the same event: readers wait on it.
            self._alarm_event = anyio.Event()

    async def _alarm_cleared(self) -> None:
        while self.broker.alarms:
            await self._alarm_event.wait()

    async def _check_disk(self) -> None:
        """The disk alarm's probe (statvfs, in a worker thread: a hung network file system
        must not stop the event loop), then the alarm on the event loop."""
        broker = self.broker
        free = await anyio.to_thread.run_sync(broker.probe_disk)
        broker.check_disk(free)

    async def _tick(self) -> None:
        """Message TTLs every 0.1 s (LavinMQ's granularity); connection timers every 0.5 s
        (heartbeats go out at half the negotiated interval, as RabbitMQ's); the live
        topology file and the disk probe every second, after the connections, so a slow
        disk probe (a worker thread) never delays a heartbeat."""
        rounds = 0
        while True:
            await anyio.sleep(0.1)
            self.broker.tick(time.monotonic())
            rounds += 1
            # A fifth of the connections each round: every one is ticked each 0.5 s, and
            # 10,000 connections never stall the loop (and other clients) in one pass.
            self._tick_connections(rounds % TICK_ROUNDS)
            if rounds % 10:
                continue
            await self._write_live_topology()
            await self._check_disk()
            self.broker.pager.retry()  # queue tails a failed paging write left in memory

    def _tick_connections(self, slot: int) -> None:
        for session in [s for s in self.sessions if s.tick_slot == slot]:
            connection = session.connection
            connection.tick()
            if connection.finished:
                session.finished_ticks += 1
                if session.finished_ticks > _FINISHED_GRACE_TICKS:
                    session.abort()
            if connection.has_output or connection.finished:
                session.wake()


def open_and_recover(
    broker: Broker, opener: Callable[[Path], Store] = open_store
) -> Store:
    """Open the store in the data directory (``opener``: tests pass a store whose disk
    fails on purpose) and rebuild what it holds.

    Raises:
        StoreError: with a message naming the file when it cannot be used.
    """
    data_dir = Path(broker.settings.data_dir)
    store = opener(data_dir)
    broker.pager.path = data_dir / PAGING_FILENAME
    snapshot = store.load(with_entries=False)
    journal = PersistentJournal(store, snapshot.next_message_id)
    broker.use_journal(journal)
    install_streams(broker, data_dir / "streams")
    started = time.monotonic()
    count = recover(broker, journal, snapshot)
    LOGGER.info("recovered %d messages in %.2f s", count, time.monotonic() - started)
    try:
        broker.restore_policies(read_policies(data_dir / POLICY_FILENAME))
    except StoreError:
        store.close()
        raise
    broker.policy_file = data_dir / POLICY_FILENAME
    return store


def run(
    broker: Broker,
    configure: Callable[[Broker], object] | None = None,
    opener: Callable[[Path], Store] = open_store,
) -> int:
    """Run the broker until SIGTERM/SIGINT; returns the process exit code.

    ``configure`` (amqpd.topology.apply.configure_broker) applies the configured users,
    vhosts and topology after the store is recovered; its ValueError stops start-up.
    """

    def announce(host: str, port: int) -> None:
        # Scripts and test fixtures wait for exactly this line.
        print(f"amqpd listening on {host_port(host, port)}", flush=True)  # noqa: T201

    raise_open_files_limit()
    try:
        store = open_and_recover(broker, opener)
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
    try:
        # After the configuration: a name it defines is the configuration's.
        restore_access(broker, Path(broker.settings.data_dir) / ACCESS_FILENAME)
    except StoreError as exc:
        print(f"amqpd: {exc}", file=sys.stderr)  # noqa: T201
        store.close()
        return 1
    server = Server(broker, announce, store)
    # A broker holds millions of long-lived, acyclic objects (queued messages): with the
    # default thresholds the cyclic collector rescans them all the time (measured: 14% of
    # the CPU of an end-to-end run). Collect young objects far less often instead.
    gc.set_threshold(*_GC_THRESHOLDS)

    def announce_tls(host: str, port: int) -> None:
        print(f"amqpd listening on {host_port(host, port)} (tls)", flush=True)  # noqa: T201

    server.on_tls_listening = announce_tls

    def announce_management(host: str, port: int) -> None:
        print(f"amqpd management listening on {host}:{port}", flush=True)  # noqa: T201

    server.on_management_listening = announce_management

    def announce_prometheus(host: str, port: int) -> None:
        line = f"amqpd prometheus listening on {host_port(host, port)}"
        print(line, flush=True)  # noqa: T201

    server.on_prometheus_listening = announce_prometheus
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
