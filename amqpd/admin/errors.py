"""API errors: RabbitMQ's ``{"error": ..., "reason": ...}`` bodies with their status codes."""

from __future__ import annotations


class ApiError(Exception):
    """An error answer; ``headers`` go out with it (``WWW-Authenticate`` for 401)."""

    def __init__(
        self, status: int, error: str, reason: str, headers: dict[str, str] | None = None
    ):
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        """The JSON body as RabbitMQ sends it."""
        return {"error": self.error, "reason": self.reason}


def not_found() -> ApiError:
    """RabbitMQ's 404 for an unknown object (vhost, queue, exchange, user...)."""
    return ApiError(404, "Object Not Found", "Not Found")


def bad_request(reason: str) -> ApiError:
    """400 with RabbitMQ's ``bad_request`` error name."""
    return ApiError(400, "bad_request", reason)


def not_authorised(reason: str) -> ApiError:
    """401 as RabbitMQ answers a user who lacks a tag or a vhost permission."""
    return ApiError(401, "not_authorised", reason, {
        "WWW-Authenticate": 'Basic realm="RabbitMQ Management"'})
