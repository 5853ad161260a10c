"""Small JSON documents kept beside the store (policies, users made at run time): read
whole, replaced whole, atomically and durably.

The write goes to a temporary file that is fsync'd, renamed over the old one, and the
directory fsync'd, so after a crash the file holds either the old document or the new one,
never half of either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from amqpd.store.records import StoreCorruptError


def read_json(path: Path, what: str) -> Any | None:
    """The document at ``path`` (None when the file does not exist).

    Raises:
        StoreCorruptError: the file is not JSON (it is left as it is); ``what`` names its
            content in the message (for example "the stored policies").
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreCorruptError(f"{path} is damaged ({exc}); amqpd has left it as it is. "
                                f"Move it aside to start without {what}.") from exc


def write_json(path: Path, document: Any) -> None:
    """Replace the document at ``path`` atomically and durably.

    Raises:
        OSError: the file could not be written (the old one is still in place).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
