"""Wire constants of AMQP 0-9-1 and the reply codes the broker sends."""

from typing import Final

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTE: Final = b"\xce"
# type (1) + channel (2) + size (4) before the payload, the frame-end octet after it.
FRAME_OVERHEAD: Final = 8
# AMQP 0-9-1 §4.2.3: until tuning is done a peer must accept frames of this size.
FRAME_MIN_SIZE: Final = 4096

HEARTBEAT_FRAME: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"

CLASS_CONNECTION: Final = 10
CLASS_CHANNEL: Final = 20
CLASS_EXCHANGE: Final = 40
CLASS_QUEUE: Final = 50
CLASS_BASIC: Final = 60
CLASS_CONFIRM: Final = 85
CLASS_TX: Final = 90

# Reply codes (AMQP 0-9-1 §1.2, "Constants").
REPLY_SUCCESS: Final = 200
CONTENT_TOO_LARGE: Final = 311
NO_ROUTE: Final = 312
NO_CONSUMERS: Final = 313
CONNECTION_FORCED: Final = 320
INVALID_PATH: Final = 402
ACCESS_REFUSED: Final = 403
NOT_FOUND: Final = 404
RESOURCE_LOCKED: Final = 405
PRECONDITION_FAILED: Final = 406
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
COMMAND_INVALID: Final = 503
CHANNEL_ERROR: Final = 504
UNEXPECTED_FRAME: Final = 505
RESOURCE_ERROR: Final = 506
NOT_ALLOWED: Final = 530
NOT_IMPLEMENTED: Final = 540
INTERNAL_ERROR: Final = 541

REPLY_NAMES: Final = {
    200: "OK",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}

# Reply codes that are connection exceptions (AMQP 0-9-1 §1.2); the others close a channel.
HARD_ERRORS: Final = frozenset({320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541})


def reply_text(reply_code: int, detail: str) -> str:
    """Format a reply text the way RabbitMQ does: ``NAME - detail``, cut to a shortstr."""
    text = f"{REPLY_NAMES.get(reply_code, str(reply_code))} - {detail}"
    encoded = text.encode("utf-8")
    if len(encoded) <= 255:
        return text
    return encoded[:252].decode("utf-8", "ignore") + "..."
