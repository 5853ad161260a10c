"""Logging set-up: plain text lines or one JSON object per line (``logging.format: json``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: LogRecord attributes that are not "extra" fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"time": ..., "level": ..., "logger": ..., "message": ...}`` on one line.

    Fields passed with ``extra=`` are added; exceptions go in ``"exception"``.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value if isinstance(value, str | int | float | bool) \
                    or value is None else repr(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``plain`` or ``json``."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(PLAIN_FORMAT)


def configure_logging(level: str, log_format: str, stream: TextIO | None = None) -> None:
    """(Re)configure the root logger; safe to call again on reload."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = next((h for h in root.handlers if getattr(h, "_amqpd", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler._amqpd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter_for(log_format))
