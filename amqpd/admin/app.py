"""The management HTTP API as a Starlette application, served by uvicorn inside the
broker's own event loop (no thread, no second process).

Every request goes through :func:`dispatch`: route on the raw path, authenticate, check
the route's tag level, run the handler synchronously (so it sees and changes the broker
between two AMQP events, never in the middle of one) and answer JSON.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from amqpd.admin import api_node, dashboard
from amqpd.admin.auth import authenticate, require
from amqpd.admin.context import Call, Reply
from amqpd.admin.errors import ApiError, not_found
from amqpd.admin.http import EmbeddedHTTPServer, bind
from amqpd.admin.rates import SAMPLE_INTERVAL
from amqpd.admin.readmodel import Listener, LiveState, to_json, unacked_by_queue
from amqpd.admin.routes import Route, resolve, split_raw_path

LOGGER = logging.getLogger(__name__)
ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
_JSON = "application/json"


def all_routes() -> list[Route]:
    """The endpoint table of every family."""
    from amqpd.admin import (
        api_access,
        api_dashboard,
        api_definitions,
        api_policies,
        api_sessions,
        api_streams,
        api_topology,
    )

    return [*api_node.ROUTES, *api_topology.ROUTES, *api_access.ROUTES,
            *api_sessions.ROUTES, *api_definitions.ROUTES, *api_dashboard.ROUTES,
            *api_policies.ROUTES, *api_streams.ROUTES]


def _answer(reply: Reply) -> Response:
    if reply.body is None:
        return Response(status_code=reply.status, headers=reply.headers)
    return Response(to_json(reply.body), reply.status, reply.headers, media_type=_JSON)


def _error(error: ApiError) -> Response:
    return Response(to_json(error.body()), error.status, error.headers, media_type=_JSON)


def build_app(state: LiveState, routes: Sequence[Route] | None = None) -> Starlette:
    """The ASGI application over ``state``."""
    table = list(routes) if routes is not None else all_routes()

    async def dispatch(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        segments = split_raw_path(raw_path)
        method = request.method
        body = await request.body()
        try:
            found, variables = resolve(table, method, segments)
            if found is None:
                if variables:
                    raise ApiError(405, "Method Not Allowed", "Method Not Allowed")
                raise not_found()
            assert isinstance(variables, dict)
            client = request.client
            user = authenticate(state.broker.users, request.headers.get("authorization"),
                                client.host if client else None)
            require(user, found.level)
            query = dict(request.query_params)
            headers = {key.lower(): value for key, value in request.headers.items()}
            reply = found.handler(Call(state, user, method, variables, query, body, headers))
        except ApiError as error:
            if error.status == 401 and error.reason == "Not_Authorized" and \
                    "authorization" not in request.headers:
                # No credentials at all: RabbitMQ answers an empty 401 with the realm.
                return Response(status_code=401, headers=error.headers)
            return _error(error)
        except Exception:
            LOGGER.exception("management API: %s %s failed", method, request.url.path)
            return _error(ApiError(500, "internal_server_error", "see the broker log"))
        if method == "HEAD":
            return Response(status_code=reply.status, headers=reply.headers)
        return _answer(reply)

    # The dashboard's page and files first; everything else is the API's.
    return Starlette(routes=[*dashboard.web_routes(state),
                             StarletteRoute("/{path:path}", dispatch, methods=ALL_METHODS)])


class ManagementServer(EmbeddedHTTPServer):
    """The HTTP listener plus the rate sampler; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, state: LiveState, sock: socket.socket):
        super().__init__(build_app(state), sock)
        self.state = state

    async def serve(self, on_listening: Callable[[str, int], None] | None = None) -> None:
        """Serve HTTP and sample rates until :meth:`stop`."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._sample)
            try:
                await super().serve(on_listening)
            finally:
                group.cancel_scope.cancel()

    async def _sample(self) -> None:
        rates = self.state.rates
        if rates is None:
            return
        while True:
            rates.sample({queue: count for queue, (count, _bytes)
                          in unacked_by_queue(self.state).items()})
            await anyio.sleep(SAMPLE_INTERVAL)


def open_management(
    state: LiveState, host: str | None, port: int | None
) -> ManagementServer | None:
    """Bind the management listener for ``state``; None when it is switched off (port
    None) or the address cannot be used -- then the error is logged and the broker serves
    AMQP without it, rather than failing to start over a monitoring port."""
    if port is None:
        return None
    host = host or state.broker.settings.host
    try:
        sock = bind(host, port)
    except OSError as exc:
        LOGGER.error("management API: cannot listen on %s:%s: %s; serving AMQP without it",
                     host, port, exc)
        return None
    management = ManagementServer(state, sock)
    state.listeners.append(Listener("http", *management.address))
    return management
