"""Listening sockets and the process limits they need: ``localhost`` on both loopback
addresses, ``::`` dual-stack, the addresses as the "listening" lines print them, and the
open-files limit raised for many connections. No broker logic: the shell uses these."""

from __future__ import annotations

import errno
import logging
import resource

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

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


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
