"""Routing on the raw request path.

Vhost and object names may contain ``/`` (the default vhost is ``/``, sent as ``%2F``), so
the path is split on the *raw* bytes first and each segment is percent-decoded afterwards,
as RabbitMQ (cowboy) does; a router that decodes first would see ``/api/queues///q``.
An empty vhost segment means ``/`` (Flower sends ``queues//``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from amqpd.admin.auth import Level

#: Path variables that name a vhost (an empty one is ``/``).
VHOST_VARIABLES = frozenset({"vhost"})


def split_raw_path(raw_path: bytes) -> list[str]:
    """``/api/queues/%2F/a%2Fb`` -> ``["api", "queues", "/", "a/b"]`` (a trailing slash is
    dropped; inner empty segments are kept)."""
    text = raw_path.decode("latin-1").split("?", 1)[0]
    parts = text.split("/")[1:]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()
    return [unquote(part, encoding="utf-8", errors="replace") for part in parts]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: methods, a pattern like ``api/queues/{vhost}/{name}``, the handler and
    the tag level it needs."""

    methods: frozenset[str]
    pattern: tuple[str, ...]
    handler: Callable[..., Any]
    level: Level = "management"

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path variables when ``segments`` fit the pattern, else None."""
        if len(segments) != len(self.pattern):
            return None
        variables: dict[str, str] = {}
        for part, segment in zip(self.pattern, segments, strict=True):
            if part.startswith("{"):
                name = part[1:-1]
                variables[name] = segment or "/" if name in VHOST_VARIABLES else segment
            elif part != segment:
                return None
        return variables


def route(
    methods: str, pattern: str, handler: Callable[..., Any], level: Level = "management"
) -> Route:
    """``route("GET PUT", "api/queues/{vhost}/{name}", handler)``."""
    return Route(frozenset(methods.split()), tuple(pattern.split("/")), handler, level)


def resolve(
    routes: Sequence[Route], method: str, segments: Sequence[str]
) -> tuple[Route, dict[str, str]] | tuple[None, bool]:
    """The route and its variables, or (None, True) when the path exists for other methods
    (405) and (None, False) when it does not exist at all (404)."""
    path_exists = False
    for candidate in routes:
        variables = candidate.match(segments)
        if variables is None:
            continue
        if method in candidate.methods or (method == "HEAD" and "GET" in candidate.methods):
            return candidate, variables
        path_exists = True
    return None, path_exists
