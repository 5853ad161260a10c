"""The Prometheus listener: RabbitMQ's endpoints on their own port (15692), served by uvicorn
inside the broker's event loop -- no thread, no second process.

A scrape reads the broker between two AMQP events: the handler is a coroutine on the broker's
loop and builds every family synchronously (only the free-disk reading, when the broker's own
probe has none, is taken in a worker thread first, as a hung file system must not stop the
loop). No authentication, as RabbitMQ's plugin: bind it to a trusted address.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from amqpd.admin.app import bind
from amqpd.admin.readmodel import LiveState
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.families import AGGREGATED, DETAILED, PER_OBJECT, BrokerCollector, Scrape

LOGGER = logging.getLogger(__name__)


async def _scrape(state: LiveState, commits: CommitStats | None) -> Scrape:
    scrape = Scrape(state, commits)
    broker = state.broker
    if broker.disk_free is None:  # the disk alarm is off: no probe runs, read it here
        path = Path(broker.settings.data_dir)
        with contextlib.suppress(OSError):
            scrape.disk_free = await anyio.to_thread.run_sync(broker.free_bytes, path)
    return scrape


def render(collector: BrokerCollector) -> bytes:
    """The text exposition format of one collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def build_app(state: LiveState, commits: CommitStats | None = None) -> Starlette:
    """The ASGI application: /metrics, /metrics/per-object, /metrics/detailed."""

    def answer(collector: BrokerCollector) -> Response:
        return Response(render(collector), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def aggregated(request: Request) -> Response:
        return answer(BrokerCollector(await _scrape(state, commits), AGGREGATED))

    async def per_object(request: Request) -> Response:
        return answer(BrokerCollector(await _scrape(state, commits), PER_OBJECT))

    async def detailed(request: Request) -> Response:
        query = request.query_params
        # RabbitMQ takes ?family=a&family=b; a comma-separated list is accepted too.
        families = {name.strip() for value in query.getlist("family")
                    for name in value.split(",") if name.strip()}
        vhosts = query.getlist("vhost") or None
        try:
            collector = BrokerCollector(await _scrape(state, commits), DETAILED, families,
                                        vhosts, query.get("queue") or None)
        except re.error as exc:
            return PlainTextResponse(f"invalid queue pattern: {exc}\n", status_code=400)
        return answer(collector)

    return Starlette(routes=[
        Route("/metrics", aggregated, methods=["GET"]),
        Route("/metrics/per-object", per_object, methods=["GET"]),
        Route("/metrics/detailed", detailed, methods=["GET"]),
    ])


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the broker's signal watcher stops it), and
    with a hook for the "listening" line once it accepts."""

    on_started: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()


class PrometheusServer:
    """The metrics HTTP listener; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, state: LiveState, sock: socket.socket,
                 commits: CommitStats | None = None):
        self.sock = sock
        config = uvicorn.Config(
            build_app(state, commits), log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=1, timeout_keep_alive=5, server_header=False,
        )
        self.server = _Server(config)
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


def open_prometheus(
    state: LiveState, host: str, port: int | None, commits: CommitStats | None = None
) -> PrometheusServer | None:
    """Bind the metrics listener; None when it is off (port None) or the address cannot be
    used -- then the error is logged and the broker runs without it, rather than failing to
    start over a monitoring port."""
    if port is None:
        return None
    try:
        sock = bind(host, port)
    except OSError as exc:
        LOGGER.error("prometheus: cannot listen on %s:%s: %s; serving AMQP without it",
                     host, port, exc)
        return None
    return PrometheusServer(state, sock, commits)
