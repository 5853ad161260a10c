"""Exceptions that carry the AMQP reply the broker must send.

Raising one of these anywhere below a method handler is how the core says "answer with this
code"; the connection turns a :class:`ChannelError` into channel.close and a
:class:`ConnectionLevelError` into connection.close.
"""

from __future__ import annotations

from amqpd.protocol.constants import HARD_ERRORS, reply_text


class AMQPError(Exception):
    """An error that maps to one AMQP reply code."""

    def __init__(self, reply_code: int, detail: str, class_id: int = 0, method_id: int = 0):
        super().__init__(detail)
        self.reply_code = reply_code
        self.detail = detail
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        """The reply text as sent on the wire (``NAME - detail``)."""
        return reply_text(self.reply_code, self.detail)

    @property
    def is_hard(self) -> bool:
        """True when the spec says this code closes the whole connection."""
        return self.reply_code in HARD_ERRORS


class ChannelError(AMQPError):
    """A soft error: the channel is closed, the connection carries on."""


class ConnectionLevelError(AMQPError):
    """A hard error: the connection is closed."""


class FrameError(ConnectionLevelError):
    """The byte stream is not valid AMQP framing (501 FRAME_ERROR)."""

    def __init__(self, detail: str):
        super().__init__(501, detail)


def error_for(reply_code: int, detail: str, class_id: int = 0, method_id: int = 0) -> AMQPError:
    """Build the right error class for a reply code."""
    cls = ConnectionLevelError if reply_code in HARD_ERRORS else ChannelError
    return cls(reply_code, detail, class_id, method_id)
