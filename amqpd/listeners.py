"""Listening sockets and the process limits they need: ``localhost`` on both loopback
addresses, ``::`` dual-stack, the addresses as the "listening" lines print them, the
open-files limit raised for many connections, and the limits on sockets still in the AMQP
handshake. No broker logic: the shell uses these."""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

LOGGER = logging.getLogger("amqpd.server")


async def tcp_listener(host: str, port: int) -> MultiListener[SocketStream]:
    """A listener on ``host``; two names mean more than one address. ``localhost`` is
    127.0.0.1 and ::1 on one port, whatever the resolver says (Node, Java and Go clients
    try ::1 first where /etc/hosts has it, and were refused). ``::`` is every address of
    both families: anyio makes an explicit ``::`` IPv6-only, and no host dual-stack."""
    if host == "::":
        return await anyio.create_tcp_listener(local_port=port, reuse_port=False)
    if host != "localhost":
        return await anyio.create_tcp_listener(local_host=host, local_port=port,
                                               reuse_port=False)
    for _ in range(10):
        ipv4 = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port,
                                               reuse_port=False)
        bound = ipv4.extra(SocketAttribute.local_port)
        try:
            ipv6 = await anyio.create_tcp_listener(local_host="::1", local_port=bound,
                                                   reuse_port=False)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # no IPv6 here (disabled, no ::1)
                LOGGER.warning("localhost is 127.0.0.1 only: cannot listen on ::1: %s", exc)
                return ipv4
            await ipv4.aclose()
            if port:
                raise
            continue  # --port 0: the port 127.0.0.1 got is taken on ::1; take another
        return MultiListener([*ipv4.listeners, *ipv6.listeners])
    raise OSError(errno.EADDRINUSE, "no port free on both 127.0.0.1 and ::1")


def addresses(listener: MultiListener[SocketStream]) -> list[tuple[str, int]]:
    """(host, port) of each socket of a listener."""
    addresses = []
    for socket_listener in listener.listeners:
        address = socket_listener.extra(SocketAttribute.local_address)
        assert isinstance(address, tuple)
        addresses.append((str(address[0]), int(address[1])))
    return addresses


def peer_host(stream: SocketStream) -> str | None:
    """The peer's IP address (None when the peer is already gone)."""
    try:
        peer = stream.extra(SocketAttribute.remote_address)
    except Exception:  # a peer that is already gone has no address (OSError)
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def send_buffers(stream: SocketStream | TLSStream,
                       buffers: list[bytes | bytearray | memoryview]) -> None:
    """Write ``buffers`` in order: on a plain TCP stream, in one scatter-gather write.

    anyio's ``send`` waits, after each write, until the transport's buffer is below its low
    watermark, so writing buffer by buffer lets the socket run dry between the frames of a
    large body (1 MiB bodies: 0.74x). The asyncio/uvloop transport takes them all at once
    (``writelines``: writev, no copy), then one empty ``send`` waits for the drain as a send
    would and raises what it would. anyio does not expose the transport, so its
    ``_transport`` is looked up defensively; any other stream (TLS) gets one joined send.
    """
    transport = plain_transport(stream)
    if len(buffers) > 1 and transport is not None and not transport.is_closing():
        transport.writelines(buffers)
        await stream.send(b"")
    else:
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        await stream.send(data)  # type: ignore[arg-type]  # a transport takes any bytes-like


def plain_transport(stream: SocketStream | TLSStream) -> Any:
    """The asyncio/uvloop transport under a plain TCP stream (None for TLS, or for an anyio
    that renames its private ``_transport``): its ``writelines`` takes buffers without
    waiting."""
    transport: Any = getattr(stream, "_transport", None)
    return transport if hasattr(transport, "writelines") else None


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit (as Go's runtime does): the
    default soft limit of 1024 would turn a thousand idle or half-open sockets into
    EMFILE on accept. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            LOGGER.info("open files limit raised from %d to %d", soft, wanted)
            soft = wanted
        except (ValueError, OSError) as exc:
            LOGGER.warning("cannot raise the open files limit from %d: %s", soft, exc)
    else:
        # Said either way: "how many connections can this broker hold" starts here.
        LOGGER.info("open files limit %s (already the hard limit)",
                    "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


# A refused address is logged at most this often (seconds), with the count since its last line.
REFUSAL_LOG_INTERVAL = 10.0
_EVERY_ADDRESS = "*"


class HandshakeSlot:
    """One accepted socket's place among those in the handshake; released once, when the
    connection reaches connection.open-ok or the socket goes, whichever comes first."""

    __slots__ = ("_limits", "address")

    def __init__(self, limits: HandshakeLimits, address: str | None) -> None:
        self._limits: HandshakeLimits | None = limits
        self.address = address

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits.released(self.address)


class HandshakeLimits:
    """Counts the sockets that have not completed the AMQP handshake (connection.open-ok),
    per peer address and in all, and refuses new ones past either limit (0 = no limit).

    A half-open socket costs a descriptor and a task until ``handshake_timeout``; without a
    per-address limit one host opening sockets faster than the timeout frees them could take
    every descriptor, and real clients from elsewhere would wait or get EMFILE. Only sockets
    still in the handshake count: an address may hold any number of open connections.
    """

    def __init__(self, per_address: int, total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_address = per_address
        self.total = total
        self.clock = clock
        self.in_handshake = 0
        self.by_address: dict[str | None, int] = {}
        # Per refused address (or "*" for the total): when it was last logged, and how
        # many sockets were refused since -- one log line per address per interval.
        self._refusals: dict[str, tuple[float, int]] = {}

    def admit(self, address: str | None) -> HandshakeSlot | None:
        """A slot for a new socket from ``address``, or None: close it at once."""
        if self.total and self.in_handshake >= self.total:
            self._refused(_EVERY_ADDRESS, f"{self.in_handshake} sockets are in the handshake "
                          "(listeners.max_handshakes)")
            return None
        held = self.by_address.get(address, 0)
        if self.per_address and address is not None and held >= self.per_address:
            self._refused(address, f"{held} sockets from it are in the handshake "
                          "(listeners.max_handshakes_per_address)")
            return None
        self.by_address[address] = held + 1
        self.in_handshake += 1
        return HandshakeSlot(self, address)

    def released(self, address: str | None) -> None:
        self.in_handshake -= 1
        held = self.by_address[address] - 1
        if held:
            self.by_address[address] = held
        else:
            del self.by_address[address]

    def _refused(self, address: str, why: str) -> None:
        now = self.clock()
        last = self._refusals.get(address)
        logged_at, count = last if last is not None else (now - REFUSAL_LOG_INTERVAL, 0)
        count += 1
        if now - logged_at < REFUSAL_LOG_INTERVAL:
            self._refusals[address] = (logged_at, count)
            return
        if len(self._refusals) > 1000:
            # Addresses not refused for a whole interval have nothing left to report.
            self._refusals = {key: value for key, value in self._refusals.items()
                              if now - value[0] < REFUSAL_LOG_INTERVAL}
        self._refusals[address] = (now, 0)
        source = "connections" if address == _EVERY_ADDRESS else f"connections from {address}"
        since = f" in the last {now - logged_at:.0f} s" if last is not None else ""
        LOGGER.warning("refusing %s: %s; %d refused%s", source, why, count, since)
