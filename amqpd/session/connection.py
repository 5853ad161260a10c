"""The sans-IO AMQP connection: bytes in, bytes out, no sockets and no event loop.

Theory of operation:
- ``data_received(bytes)`` runs the handshake state machine, splits frames (FrameReader),
  decodes methods and hands them to channels. Everything that must be sent is appended to
  ``out`` (a bytearray; large bodies by reference, see session/output.py); the I/O shell
  takes it with ``buffers_to_send()`` and writes it, so many frames leave in one system call.
- Deliveries from other connections' publishes are appended to ``out`` synchronously; the
  shell's ``wakeup`` callback tells its writer there is something to send.
- Errors are exceptions carrying the reply code: a ChannelError closes one channel, a
  ConnectionLevelError closes the connection (connection.close, then wait for close-ok).
- ``finished`` becomes true when the socket should be closed once ``out`` is flushed.
"""

from __future__ import annotations

import enum
import logging
import platform
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pamqp import commands
from pamqp.base import Frame as Method

from amqpd import __version__
from amqpd.access.auth import AuthError, mechanisms_for
from amqpd.access.permissions import check_vhost_access
from amqpd.broker.broker import blocked_reason
from amqpd.broker.message import Message, QueueEntry
from amqpd.protocol import codec
from amqpd.protocol.constants import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
)
from amqpd.protocol.errors import AMQPError, ChannelError, ConnectionLevelError, FrameError
from amqpd.protocol.framing import FrameReader
from amqpd.session.channel import FLOW_BACKLOG, Channel, ChannelState
from amqpd.session.output import ConnectionOutput

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker
    from amqpd.broker.queue import Queue
    from amqpd.broker.vhost import VirtualHost

LOGGER = logging.getLogger(__name__)

_PUBLISH_PREFIX = b"\x00\x3c\x00\x28"



class ConnectionState(enum.Enum):
    """Handshake and lifecycle states (AMQP 0-9-1 §4.2.2 / §2.2.4)."""

    AWAIT_HEADER = "await-header"
    AWAIT_START_OK = "await-start-ok"
    AWAIT_TUNE_OK = "await-tune-ok"
    AWAIT_OPEN = "await-open"
    OPEN = "open"
    #: We sent connection.close; only close / close-ok are read now.
    CLOSING = "closing"
    CLOSED = "closed"

# Until connection.open-ok the peer is on the clock (listeners.handshake_timeout).
_HANDSHAKING = frozenset(state for state in ConnectionState if state.name.startswith("AWAIT"))


SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}


class Connection(ConnectionOutput):
    """One client connection, driven by bytes."""

    def __init__(
        self,
        broker: Broker,
        peer: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tls_peer_cn: str | None = None,
    ):
        # The common name of a verified TLS client certificate: enables SASL EXTERNAL.
        self.tls_peer_cn = tls_peer_cn
        self.broker = broker
        self.settings = broker.settings
        self.peer = peer
        super().__init__(clock, self.settings.frame_max, self.settings.output_high_watermark,
                         self.settings.output_low_watermark)
        self.state = ConnectionState.AWAIT_HEADER
        self.finished = False
        self.close_deadline: float | None = None
        self.reader = FrameReader(max(FRAME_MIN_SIZE, self.settings.frame_max))
        self._header_buffer = b""
        self.channels: dict[int, Channel] = {}
        self.channel_max = self.settings.channel_max
        self.heartbeat = 0
        self.last_received = clock()
        self.accepted_at = clock()
        self.client_properties: dict[str, object] = {}
        self.user_name = ""
        self.vhost: VirtualHost = None  # type: ignore[assignment]  # set by connection.open
        self.last_queue_name: str | None = None
        self.confirms_pending: set[Channel] = set()
        # Whether a delivery was refused because of the output watermark since the output
        # last drained.
        self.held_back = False
        self.close_reason: str | None = None
        # Set once the client publishes: only publishers are blocked by a memory alarm.
        self.is_publisher = False
        # Consumed queues with a backlog this connection published into (flow control).
        self.flow_queues: set[Queue] = set()
        self.blocked_sent = False
        self._discard_input = False
        # Set when the client closed the connection: the shell then sends FIN after close-ok
        # and reads (dropping it) until the client closes, instead of closing at once.
        self.drain_after_close = False
        # For the management API: when it opened (wall clock, ms) and the churn counter.
        self.connected_at = int(time.time() * 1000)
        broker.stats.connection_created += 1

    # -- output (the rest is in ConnectionOutput) ------------------------------------

    def write_method(self, channel: int, method: Method) -> None:
        """Queue one method frame (pamqp-encoded)."""
        if self.state is ConnectionState.CLOSED:
            return
        self._write(codec.encode_method(channel, method))

    def write_get_ok(
        self, channel: int, delivery_tag: int, entry: QueueEntry, message_count: int
    ) -> None:
        """Queue basic.get-ok plus the content."""
        message = entry.message
        self._write(
            codec.encode_get_ok(
                channel, delivery_tag, entry.redelivered, message.route.exchange_bytes,
                message.route.routing_key_bytes, message_count,
            )
        )
        self._append_content(channel, message, entry.delivery_count)

    def write_return(
        self, channel: int, reply_code: int, reply_text: str, message: Message
    ) -> None:
        """Queue basic.return plus the content (mandatory message with no route)."""
        self.write_method(
            channel,
            codec.basic_return(reply_code, reply_text, message.exchange, message.routing_key),
        )
        self._append_content(channel, message)

    def flow_blocked(self) -> bool:
        """True while a queue this connection fed still has a backlog and consumers."""
        queues = self.flow_queues
        for queue in list(queues):
            if queue.deleted or not queue.consumers or len(queue.ready) <= FLOW_BACKLOG // 2:
                queues.discard(queue)
        return bool(queues)

    def set_blocked(self, alarms: frozenset[str]) -> None:
        """Tell a publisher the broker is (no longer) blocking it (an alarm listener). As
        RabbitMQ: one blocked names the raised alarms; unblocked once none is raised."""
        if alarms and self.is_publisher and not self.blocked_sent and \
                self.state is ConnectionState.OPEN and \
                self.client_capability("connection.blocked"):
            self.blocked_sent = True
            self.write_method(0, commands.Connection.Blocked(blocked_reason(alarms)))
        elif not alarms and self.blocked_sent:
            self.blocked_sent = False
            self.write_method(0, commands.Connection.Unblocked())

    def client_capability(self, name: str) -> bool:
        """Whether the client announced an extension in client_properties.capabilities."""
        capabilities = self.client_properties.get("capabilities")
        return isinstance(capabilities, dict) and bool(capabilities.get(name))

    # -- input -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Process bytes from the socket; everything to send ends up in ``out``."""
        if self.state is ConnectionState.CLOSED or self.finished or self._discard_input:
            return
        self.last_received = self.clock()
        if self.state is ConnectionState.AWAIT_HEADER:
            data = self._receive_protocol_header(data)
            if not data:
                return
        self.reader.feed(data)
        try:
            self._process_frames()
        except ConnectionLevelError as exc:
            self._fail(exc)
        except Exception:
            # A bug must cost one connection, not the broker: 541 to this client, details in
            # the log, and every other connection carries on.
            LOGGER.exception("internal error on connection %s", self.peer)
            self._fail(ConnectionLevelError(
                541, "internal error; the broker logged the details"
            ))
        finally:
            if self.confirms_pending:
                for channel in self.confirms_pending:
                    channel.flush_confirms()
                self.confirms_pending.clear()

    def _receive_protocol_header(self, data: bytes) -> bytes:
        buffered = self._header_buffer + data
        if len(buffered) < 8:
            if PROTOCOL_HEADER.startswith(buffered):
                self._header_buffer = buffered
                return b""
        elif buffered[:8] == PROTOCOL_HEADER:
            self._header_buffer = b""
            self.state = ConnectionState.AWAIT_START_OK
            self._send_start()
            return buffered[8:]
        # AMQP 0-9-1 §4.2.2: answer a bad header with the header we support and close.
        LOGGER.info("bad protocol header %r from %s", buffered[:8], self.peer)
        self._write(PROTOCOL_HEADER)
        self.state = ConnectionState.CLOSED
        self.finished = True
        return b""

    def _process_frames(self) -> None:
        channels = self.channels
        for frame_type, channel_id, payload in self.reader.frames():
            if self.state is ConnectionState.OPEN and channel_id:
                channel = channels.get(channel_id)
                if channel is not None and channel.state is ChannelState.OPEN:
                    try:
                        if not isinstance(payload, bytes):
                            channel.on_content_body(payload)  # only body frames are views
                        elif frame_type == FRAME_METHOD:
                            prefix = payload[:4]
                            if prefix == _PUBLISH_PREFIX and not channel.expecting_content:
                                channel.begin_publish(codec.decode_publish_cached(payload))
                            elif (prefix == codec.ACK_PREFIX and len(payload) == 13
                                  and not channel.expecting_content):
                                # basic.ack is as hot as publish on a consuming connection.
                                channel.acknowledge(*codec.decode_ack(payload))
                            else:
                                self._channel_method(channel, payload)
                        elif frame_type == FRAME_BODY:
                            channel.on_content_body(payload)
                        elif frame_type == FRAME_HEADER:
                            channel.on_content_header(payload)
                        else:
                            raise ConnectionLevelError(
                                505, f"heartbeat frame on channel {channel_id}; heartbeats "
                                "must use channel 0",
                            )
                    except ChannelError as exc:
                        self._close_channel(channel, exc)
                    continue
            self._slow_frame(frame_type, channel_id, bytes(payload))
            if self.finished:
                return

    def _channel_method(self, channel: Channel, payload: bytes) -> None:
        method = codec.decode_method(payload)
        if channel.expecting_content:
            raise ConnectionLevelError(
                505,
                f"expected content header for class 60, got non content header frame "
                f"{codec.method_name(method)} on channel {channel.id}",
                60, 40,
            )
        if isinstance(method, commands.Connection.Close | commands.Connection.CloseOk):
            raise ConnectionLevelError(
                503, f"{codec.method_name(method)} on channel {channel.id}", *_ids(method)
            )
        channel.handle_method(method)

    def _slow_frame(self, frame_type: int, channel_id: int, payload: bytes) -> None:
        """Every frame that is not a channel frame of an open connection."""
        if frame_type == FRAME_HEARTBEAT:
            if channel_id:
                raise ConnectionLevelError(
                    505,
                    f"heartbeat frame on channel {channel_id}; heartbeats must use channel 0",
                )
            return
        if self.state is ConnectionState.CLOSING:
            if frame_type == FRAME_METHOD and channel_id == 0:
                method = codec.decode_method(payload)
                if isinstance(method, commands.Connection.CloseOk):
                    self._finish()
                elif isinstance(method, commands.Connection.Close):
                    self.write_method(0, commands.Connection.CloseOk())
                    self.drain_after_close = True
                    self._finish()
            return
        if channel_id == 0:
            if frame_type != FRAME_METHOD:
                raise ConnectionLevelError(
                    505, f"unexpected frame type {frame_type} on channel 0"
                )
            method = codec.decode_method(payload)
            if method.index >> 16 != 10:
                raise ConnectionLevelError(
                    504, f"{codec.method_name(method)} on channel 0, which is reserved for "
                    "the connection class", *_ids(method),
                )
            self._connection_method(method)
            return
        if self.state is not ConnectionState.OPEN:
            raise ConnectionLevelError(
                504, f"frame on channel {channel_id} before the connection was opened"
            )
        channel = self.channels.get(channel_id)
        if channel is None:
            if frame_type != FRAME_METHOD:
                raise ConnectionLevelError(
                    504,
                    f"content frame on channel {channel_id}, which is not open",
                )
            method = codec.decode_method(payload)
            if isinstance(method, commands.Channel.Open):
                self._open_channel(channel_id)
                return
            if isinstance(method, commands.Channel.CloseOk):
                return
            raise ConnectionLevelError(
                504, f"expected 'channel.open' on channel {channel_id}, which is not open; "
                f"got {codec.method_name(method)}",
                *_ids(method),
            )
        # The channel is closing: AMQP 0-9-1 §2.2.4 says drop all but close / close-ok.
        if frame_type == FRAME_METHOD:
            method = codec.decode_method(payload)
            if isinstance(method, commands.Channel.CloseOk):
                del self.channels[channel_id]
            elif isinstance(method, commands.Channel.Close):
                self.write_method(channel_id, commands.Channel.CloseOk())

    # -- handshake ---------------------------------------------------------------------

    def _send_start(self) -> None:
        self.write_method(
            0,
            commands.Connection.Start(
                version_major=0,
                version_minor=9,
                server_properties={
                    "product": "amqpd",
                    "version": __version__,
                    "platform": f"Python {platform.python_version()}",
                    "information": "An AMQP 0-9-1 broker in Python; see README.md",
                    "copyright": "amqpd developers",
                    "cluster_name": self.broker.cluster_name,
                    "capabilities": dict(SERVER_CAPABILITIES),
                    # Alarms and a failed store for `amqpd ping`; clients ignore the rest.
                    "health": "; ".join(self.broker.health()) or "ok",
                },
                mechanisms=mechanisms_for(self.tls_peer_cn is not None),
                locales="en_US",
            ),
        )

    def _connection_method(self, method: Method) -> None:
        state = self.state
        if isinstance(method, commands.Connection.Close):
            # Frames may still follow the close (amqplib muxes its channels' buffers, so
            # publishes queued earlier can leave after it): they are dropped (``finished``),
            # and the shell keeps reading until the client closes, because closing a socket
            # with unread input sends RST, and RST destroys the close-ok the client has not
            # read yet (ECONNRESET instead of a completed close).
            self.write_method(0, commands.Connection.CloseOk())
            self.drain_after_close = True
            self._finish()
            return
        if state is ConnectionState.AWAIT_START_OK and isinstance(
            method, commands.Connection.StartOk
        ):
            self._on_start_ok(method)
        elif state is ConnectionState.AWAIT_TUNE_OK and isinstance(
            method, commands.Connection.TuneOk
        ):
            self._on_tune_ok(method)
        elif state is ConnectionState.AWAIT_OPEN and isinstance(method, commands.Connection.Open):
            self._on_open(method)
        elif state is ConnectionState.OPEN and isinstance(
            method, commands.Connection.UpdateSecret
        ):
            self.write_method(0, commands.Connection.UpdateSecretOk())
        elif isinstance(method, commands.Connection.CloseOk):
            self._finish()
        else:
            raise ConnectionLevelError(
                503,
                f"{codec.method_name(method)} is not valid on channel 0 in state "
                f"{state.value}",
                *_ids(method),
            )

    def _on_start_ok(self, method: commands.Connection.StartOk) -> None:
        self.client_properties = dict(method.client_properties or {})
        # Not method.response: pamqp types it str but gives bytes when it is not UTF-8, and
        # compiled (mypyc) code checks the declared type on access -- a 541 (the fuzzer).
        response: str | bytes = getattr(method, "response", b"")
        raw = response.encode("latin-1") if isinstance(response, str) else bytes(response or b"")
        host = self.peer[0] if self.peer else None
        try:
            user = self.broker.users.authenticate(
                method.mechanism, raw, host, peer_cn=self.tls_peer_cn
            )
        except AuthError as exc:
            LOGGER.warning("authentication failed from %s: %s", self.peer, exc)
            if self.client_capability("authentication_failure_close"):
                self._fail(ConnectionLevelError(403, str(exc)))
            else:
                self._finish()
            return
        self.user = user
        self.user_name = user.name
        self.state = ConnectionState.AWAIT_TUNE_OK
        self.write_method(
            0,
            commands.Connection.Tune(
                channel_max=self.settings.channel_max,
                frame_max=self.settings.frame_max,
                heartbeat=self.settings.heartbeat,
            ),
        )

    def _on_tune_ok(self, method: commands.Connection.TuneOk) -> None:
        server_frame_max = self.settings.frame_max
        frame_max = method.frame_max or server_frame_max
        if frame_max < FRAME_MIN_SIZE:
            raise ConnectionLevelError(
                530, f"frame_max={frame_max} < {FRAME_MIN_SIZE} min size", 10, 31
            )
        if frame_max > server_frame_max:
            raise ConnectionLevelError(
                530, f"frame_max={frame_max} > {server_frame_max} max size", 10, 31
            )
        # RabbitMQ-compat: 0 means "no limit", which is above ours, so it is refused too.
        channel_max = method.channel_max or 65535
        if channel_max > self.settings.channel_max:
            raise ConnectionLevelError(
                530,
                f"channel_max={channel_max} > {self.settings.channel_max} max",
                10, 31,
            )
        self.frame_max = frame_max
        self.reader.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = method.heartbeat
        self.state = ConnectionState.AWAIT_OPEN

    def _on_open(self, method: commands.Connection.Open) -> None:
        name = method.virtual_host or "/"
        vhost = self.broker.vhosts.get(name)
        if vhost is None:
            raise ConnectionLevelError(530, f"vhost {name} not found", 10, 40)
        check_vhost_access(self.user, name)
        self.vhost = vhost
        self.state = ConnectionState.OPEN
        self.broker.add_alarm_listener(self.set_blocked)
        self.write_method(0, commands.Connection.OpenOk())

    # -- channels ----------------------------------------------------------------------

    def _open_channel(self, channel_id: int) -> None:
        # RabbitMQ-compat: channel_max limits how many channels are open, not their ids.
        if len(self.channels) >= self.channel_max:
            raise ConnectionLevelError(
                530,
                f"number of channels opened ({len(self.channels)}) has reached the "
                f"negotiated channel_max ({self.channel_max})",
            )
        limit = self.settings.max_channels_per_connection
        if limit and len(self.channels) >= limit:
            raise ConnectionLevelError(
                530,
                f"number of channels opened ({len(self.channels)}) has reached the limit of "
                f"{limit} channels per connection (limits.max_channels_per_connection)",
            )
        self.channels[channel_id] = Channel(self, channel_id)
        self.write_method(channel_id, commands.Channel.OpenOk())

    def close_channel_by_client(self, channel: Channel) -> None:
        """channel.close from the client: release and answer close-ok."""
        channel.flush_confirms()
        self.channels.pop(channel.id, None)
        channel.release()
        self.write_method(channel.id, commands.Channel.CloseOk())

    def _close_channel(self, channel: Channel, error: ChannelError) -> None:
        LOGGER.info("closing channel %s of %s: %s", channel.id, self.peer, error.reply_text)
        channel.flush_confirms()
        channel.state = ChannelState.CLOSING
        channel.release()
        self.write_method(
            channel.id,
            commands.Channel.Close(
                error.reply_code, error.reply_text, error.class_id, error.method_id
            ),
        )

    # -- closing -----------------------------------------------------------------------

    def _fail(self, error: AMQPError) -> None:
        """Close the connection with a reply code (a hard error, or auth failure)."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        LOGGER.info("closing connection %s: %s", self.peer, error.reply_text)
        if self.state in (ConnectionState.AWAIT_HEADER, ConnectionState.AWAIT_TUNE_OK) or (
            self.state is ConnectionState.AWAIT_START_OK and error.reply_code != 403
        ):
            # RabbitMQ-compat: during the handshake (but for a refused login) the client
            # gets no connection.close, the socket is just closed.
            self._finish()
            return
        self.close_reason = error.reply_text
        self.write_method(
            0,
            commands.Connection.Close(
                error.reply_code, error.reply_text, error.class_id, error.method_id
            ),
        )
        self._release_all()
        self.state = ConnectionState.CLOSING
        self.close_deadline = self.clock() + self.settings.close_timeout
        if isinstance(error, FrameError):
            # The byte stream cannot be trusted any more, so no close-ok could be read: drop
            # whatever arrives and close after a grace second. Closing at once would reset
            # a socket with unread input, and the client might never see the close.
            self._discard_input = True
            self.close_deadline = self.clock() + 1.0

    def close_by_server(self, reply_code: int, detail: str) -> None:
        """Start a server-initiated close (shutdown: 320 CONNECTION_FORCED)."""
        if self.state is ConnectionState.OPEN:
            self._fail(ConnectionLevelError(reply_code, detail))
        else:
            self._finish()

    def _finish(self) -> None:
        self._release_all()
        self.state = ConnectionState.CLOSED
        self.finished = True

    def _release_all(self) -> None:
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            channel.release()
        if self.vhost is not None:
            self.vhost.drop_exclusive_queues(self)
            self.broker.remove_alarm_listener(self.set_blocked)
            self.vhost = None  # type: ignore[assignment]

    def connection_lost(self) -> None:
        """The socket is gone (peer closed, error, heartbeat timeout): clean up."""
        if self.state is not ConnectionState.CLOSED:
            self._finish()

    # -- timers ------------------------------------------------------------------------

    def tick(self) -> None:
        """Called twice a second by the shell: heartbeats, ack deadlines, close
        time-outs."""
        now = self.clock()
        if self.close_deadline is not None and now >= self.close_deadline:
            self._finish()
            return
        if self.state in _HANDSHAKING and now - self.accepted_at >= self.settings.handshake_timeout:
            # A peer stuck before connection.open (silent, half-open) must not keep a socket.
            LOGGER.info("closing %s: handshake timeout in %s", self.peer, self.state.value)
            self._finish()
            return
        if self.state is ConnectionState.OPEN:
            for channel in list(self.channels.values()):
                if channel.state is ChannelState.OPEN:
                    try:
                        channel.check_deadlines(now)
                    except ChannelError as exc:
                        self._close_channel(channel, exc)
        if self.heartbeat and self.state in (ConnectionState.OPEN, ConnectionState.AWAIT_OPEN):
            if self.is_publisher and self.broker.alarms:
                self.last_received = now  # not read while blocked: silence is ours (RabbitMQ)
            if now - self.last_received > 2 * self.heartbeat:
                LOGGER.info("heartbeat timeout for %s: no frames for %ss",
                            self.peer, 2 * self.heartbeat)
                self.close_reason = "missed heartbeats from client"
                self._finish()
                return
            if now - self.last_sent >= self.heartbeat / 2 and not self.has_output:
                self._write(HEARTBEAT_FRAME)

    def on_drained(self) -> None:
        """The shell flushed the output buffer below the low watermark: resume deliveries."""
        self.held_back = False
        for channel in list(self.channels.values()):
            if channel.consumers:
                channel.dispatch_consumers()


def _ids(method: Method) -> tuple[int, int]:
    index = int(getattr(method, "index", 0))
    return index >> 16, index & 0xFFFF

