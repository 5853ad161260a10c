"""Wire details answered as RabbitMQ does (issue #12), driven with bytes; the interop suite
(interop/test_parity_wire.py, interop/test_ipv6.py) checks the same against both brokers."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest
from pamqp import commands, frame

from amqpd.broker.broker import Broker
from amqpd.config.settings import Settings
from amqpd.listeners import tcp_listener

from .amqp_client import Peer


def opened(broker: Broker | None = None) -> Peer:
    peer = Peer(broker)
    peer.handshake()
    peer.open_channel(1)
    return peer


def reply(frames: list[tuple[int, Any]]) -> Any:
    assert len(frames) == 1, frames
    return frames[0][1]


@pytest.mark.parametrize("passive", [False, True])
def test_declare_of_the_default_exchange_is_403(passive: bool) -> None:
    close = reply(opened().send(1, commands.Exchange.Declare(exchange="", passive=passive)))
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        403, "ACCESS_REFUSED - operation not permitted on the default exchange")


@pytest.mark.parametrize(("first", "second"), [(True, False), (False, True)])
def test_redeclare_with_another_exclusive_flag_is_405(first: bool, second: bool) -> None:
    peer = opened()
    peer.send(1, commands.Queue.Declare(queue="q", exclusive=first))
    close = reply(peer.send(1, commands.Queue.Declare(queue="q", exclusive=second)))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 405
    assert close.reply_text.startswith(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q'")


def test_exclusive_queue_is_transient() -> None:
    peer = opened()
    peer.send(1, commands.Queue.Declare(queue="q", exclusive=True, durable=True))
    assert not peer.connection.vhost.queues["q"].durable
    ok = reply(peer.send(1, commands.Queue.Declare(queue="q", exclusive=True)))
    assert isinstance(ok, commands.Queue.DeclareOk)


def unbind(source: str, destination: str) -> commands.Exchange.Unbind:
    return commands.Exchange.Unbind(destination=destination, source=source, routing_key="k")


def test_exchange_unbind_of_missing_source_or_destination_is_ok() -> None:
    peer = opened()
    peer.send(1, commands.Exchange.Declare(exchange="x", exchange_type="fanout"))
    for source, destination in (("x", "gone"), ("gone", "x"), ("gone", "gone-too")):
        ok = reply(peer.send(1, unbind(source, destination)))
        assert isinstance(ok, commands.Exchange.UnbindOk)
    close = reply(peer.send(1, unbind("gone", "")))
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 403


def test_queue_delete_sends_delete_ok_before_its_own_consumers_cancel() -> None:
    peer = opened()
    peer.open_channel(2)
    peer.send(1, commands.Queue.Declare(queue="q"))
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="mine"))
    peer.send(2, commands.Basic.Consume(queue="q", consumer_tag="theirs"))
    frames = peer.send(1, commands.Queue.Delete(queue="q"))
    assert [(channel, type(value).__name__, getattr(value, "consumer_tag", ""))
            for channel, value in frames] == [
        (2, "Cancel", "theirs"), (1, "DeleteOk", ""), (1, "Cancel", "mine")]
    assert peer.connection.channels[1].consumers == {}


def test_failed_queue_delete_cancels_nothing() -> None:
    peer = opened()
    peer.send(1, commands.Queue.Declare(queue="q"))
    peer.send(1, commands.Basic.Consume(queue="q", consumer_tag="mine"))
    close = reply(peer.send(1, commands.Queue.Delete(queue="q", if_unused=True)))
    assert isinstance(close, commands.Channel.Close) and close.reply_code == 406


def test_frames_after_connection_close_are_dropped_and_the_shell_drains() -> None:
    peer = opened()
    publish = frame.marshal(commands.Basic.Publish(routing_key="q"), 1)
    close = frame.marshal(commands.Connection.Close(200, "bye", 0, 0), 0)
    frames = peer.send_raw(close + publish)
    assert [type(value) for _, value in frames] == [commands.Connection.CloseOk]
    assert peer.connection.finished and peer.connection.drain_after_close
    assert peer.send_raw(publish * 10) == []


def test_server_initiated_close_does_not_drain() -> None:
    peer = opened()
    peer.connection.close_by_server(320, "broker shutdown")
    peer.read()
    peer.send(0, commands.Connection.CloseOk())
    assert peer.connection.finished and not peer.connection.drain_after_close


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_localhost_listener_is_both_loopbacks_on_one_free_port() -> None:
    async def bind() -> list[tuple[int, str, int]]:
        listener = await tcp_listener("localhost", 0)
        try:
            return [(sock.family, *sock.getsockname()[:2]) for sock in (
                item.extra(anyio.abc.SocketAttribute.raw_socket) for item in listener.listeners)]
        finally:
            await listener.aclose()

    (family4, host4, port4), (family6, host6, port6) = anyio.run(bind)
    assert (family4, host4, family6, host6) == (socket.AF_INET, "127.0.0.1",
                                                socket.AF_INET6, "::1")
    assert port4 == port6 != 0


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="no dual-stack sockets here")
def test_host_any_is_one_dual_stack_socket() -> None:
    async def bind() -> list[int]:
        listener = await tcp_listener("::", 0)
        try:
            return [item.extra(anyio.abc.SocketAttribute.raw_socket).getsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) for item in listener.listeners]
        finally:
            await listener.aclose()

    assert anyio.run(bind) == [0]


def test_settings_default_host_is_localhost() -> None:
    assert Settings().host == "localhost"
