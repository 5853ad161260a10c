"""The web dashboard: one HTML page and its static files, served at ``/`` by the
management listener behind the same HTTP Basic authentication and user tags as the API.

The page is plain HTML + JavaScript reading the JSON API (no build step, no server-side
templates): what it shows is exactly what ``curl`` gets, and the API stays the one place
where figures are defined. Files are read once from the package (they ship in the wheel as
package data) and answered from memory with an ETag, so a reload costs a 304.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute

from amqpd.admin.auth import authenticate
from amqpd.admin.errors import ApiError
from amqpd.admin.readmodel import LiveState

STATIC_DIR = Path(__file__).with_name("static")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page only talks to its own origin; uPlot sets element styles from script (CSSOM),
# which 'self' allows, so no inline script or style is needed.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file held in memory."""

    body: bytes
    media_type: str
    etag: str


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file under ``root`` by its path relative to it. Only these paths
    are ever answered, so a request cannot reach outside the directory."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        media_type = _TYPES.get(path.suffix)
        if not path.is_file() or media_type is None:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, media_type, etag)
    return assets


def _unauthorised(error: ApiError) -> Response:
    """401 with the realm, so the browser shows its login prompt."""
    page = (b"<!doctype html><title>amqpd</title><p>Log in with a user tagged management, "
            b"monitoring or administrator.</p>")
    return Response(page, error.status, {**error.headers, **_SECURITY_HEADERS},
                    media_type="text/html; charset=utf-8")


def web_routes(state: LiveState, assets: dict[str, Asset] | None = None) -> list[BaseRoute]:
    """``/`` (the page) and ``/static/...`` (its files), both behind Basic authentication;
    mounted in front of the API's catch-all route."""
    files = assets if assets is not None else load_assets()

    def answer(request: Request, name: str) -> Response:
        client = request.client
        try:
            authenticate(state.broker.users, request.headers.get("authorization"),
                         client.host if client else None)
        except ApiError as error:
            return _unauthorised(error)
        asset = files.get(name)
        if asset is None:
            return Response(b"not found", 404, _SECURITY_HEADERS, media_type="text/plain")
        # no-cache = revalidate every time: an upgraded broker never runs an old script.
        headers = {**_SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else asset.body
        response = Response(body, 200, headers, media_type=asset.media_type)
        if request.method == "HEAD":
            response.headers["content-length"] = str(len(asset.body))
        return response

    async def page(request: Request) -> Response:
        return answer(request, "index.html")

    async def static(request: Request) -> Response:
        return answer(request, request.path_params["path"])

    return [
        StarletteRoute("/", page, methods=["GET", "HEAD"]),
        StarletteRoute("/static/{path:path}", static, methods=["GET", "HEAD"]),
    ]
