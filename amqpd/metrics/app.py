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
from pathlib import Path

import anyio
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from amqpd.admin.http import EmbeddedHTTPServer, bind
from amqpd.admin.readmodel import LiveState
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.exposition import render, render_families
from amqpd.metrics.families import AGGREGATED, DETAILED, PER_OBJECT, BrokerCollector, Scrape

__all__ = ["PrometheusServer", "build_app", "open_prometheus", "render", "render_off_loop"]

LOGGER = logging.getLogger(__name__)


async def _scrape(state: LiveState, commits: CommitStats | None) -> Scrape:
    scrape = Scrape(state, commits)
    broker = state.broker
    if broker.disk_free is None:  # the disk alarm is off: no probe runs, read it here
        path = Path(broker.settings.data_dir)
        with contextlib.suppress(OSError):
            scrape.disk_free = await anyio.to_thread.run_sync(broker.free_bytes, path)
    return scrape


async def render_off_loop(collector: BrokerCollector) -> bytes:
    """Read the broker on the event loop (between two AMQP events, so the figures agree),
    then render the text in a worker thread, while AMQP traffic goes on."""
    families = list(collector.collect())
    return await anyio.to_thread.run_sync(render_families, families)


def build_app(state: LiveState, commits: CommitStats | None = None) -> Starlette:
    """The ASGI application: /metrics, /metrics/per-object, /metrics/detailed."""

    async def answer(collector: BrokerCollector) -> Response:
        body = await render_off_loop(collector)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def aggregated(request: Request) -> Response:
        return await answer(BrokerCollector(await _scrape(state, commits), AGGREGATED))

    async def per_object(request: Request) -> Response:
        return await answer(BrokerCollector(await _scrape(state, commits), PER_OBJECT))

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
        return await answer(collector)

    return Starlette(routes=[
        Route("/metrics", aggregated, methods=["GET"]),
        Route("/metrics/per-object", per_object, methods=["GET"]),
        Route("/metrics/detailed", detailed, methods=["GET"]),
    ])


class PrometheusServer(EmbeddedHTTPServer):
    """The metrics HTTP listener; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, state: LiveState, sock: socket.socket,
                 commits: CommitStats | None = None):
        super().__init__(build_app(state, commits), sock)


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
