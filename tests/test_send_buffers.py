"""``listeners.send_buffers`` over a real TCP socket: the bytes arrive whole and in order, and
on this anyio version the scatter-gather fast path is the one taken.

The fast path reaches anyio's asyncio transport through a private attribute, looked up
defensively (README, Performance: large bodies). When an anyio upgrade renames it, amqpd still
works (one joined send) but large bodies get slower; ``test_fast_path_is_available`` is what
notices.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from amqpd.listeners import send_buffers

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _round_trip(buffers: list[bytes | bytearray | memoryview]) -> tuple[bytes, Any]:
    received = bytearray()
    expected = sum(len(buffer) for buffer in buffers)
    complete = anyio.Event()
    transport: Any = None
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def serve(stream: SocketStream) -> None:
            async with stream:
                while len(received) < expected:
                    received.extend(await stream.receive())
                complete.set()

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                transport = getattr(client, "_transport", None)
                await send_buffers(client, buffers)
                with anyio.fail_after(10):
                    await complete.wait()
            group.cancel_scope.cancel()
    return bytes(received), transport


async def test_buffers_arrive_whole_and_in_order() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    buffers: list[bytes | bytearray | memoryview] = [
        b"header", memoryview(body)[: 1 << 19], memoryview(body)[1 << 19:], bytearray(b"\xce")]
    received, _ = await _round_trip(buffers)
    assert received == b"header" + body + b"\xce"


async def test_single_buffer() -> None:
    received, _ = await _round_trip([b"only one"])
    assert received == b"only one"


async def test_fast_path_is_available() -> None:
    _, transport = await _round_trip([b"a", b"b"])
    assert hasattr(transport, "writelines"), (
        "anyio no longer exposes its transport as _transport: send_buffers falls back to a "
        "joined send (correct, but large bodies are copied once more)")
