"""An HTTP listener served by uvicorn inside the broker's own event loop.

The management API and the Prometheus endpoints both use it: the socket is bound first (so
that port 0 is known before serving and a taken port is reported before anything starts),
uvicorn's own signal handling is switched off (the broker's signal watcher decides when to
stop; uvicorn would catch SIGTERM and raise it again after its shutdown), and a callback
announces the address once uvicorn accepts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from starlette.applications import Starlette


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here so that port 0 is known before serving).

    Raises:
        OSError: when the address cannot be used.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling, with a hook for "listening" once it
    accepts."""

    on_started: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()


class EmbeddedHTTPServer:
    """``app`` on ``sock``; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, app: Starlette, sock: socket.socket):
        self.sock = sock
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=1, timeout_keep_alive=5, server_header=False,
        )
        self.server = _Uvicorn(config)
        # uvicorn's "Started server process" lines would only repeat the broker's own.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    async def serve(self, on_listening: Callable[[str, int], None] | None = None) -> None:
        """Serve until :meth:`stop`; ``on_listening(host, port)`` once it accepts."""
        if on_listening is not None:
            address = self.address
            self.server.on_started = lambda: on_listening(*address)
        await self.server.serve(sockets=[self.sock])

    def stop(self) -> None:
        """Ask uvicorn to finish (it closes its connections within a second)."""
        self.server.should_exit = True
