"""Policies across restarts: ``<data_dir>/policies.json``, RabbitMQ's JSON shape of each
policy in a list, replaced as a whole on every change.

Why a file of its own and not a table in the SQLite store: policies are a handful of small
documents that operators change rarely, and nothing ties them to the store's messages or
topology (a policy names objects by pattern, never by row), so they need no atomicity with
the store's group commits; the whole set is rewritten per change, so there is no schema to
version and no migration -- and the store's batch code, on the hot path of every
persistent publish, stays as it is. The write is atomic and durable
(:mod:`amqpd.store.json_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amqpd.store.json_file import read_json, write_json
from amqpd.store.records import StoreCorruptError

FILENAME = "policies.json"


def read_policies(path: Path) -> list[dict[str, Any]]:
    """The stored policies (none when the file does not exist).

    Raises:
        StoreCorruptError: the file is not such a list (it is left as it is).
    """
    documents = read_json(path, "the stored policies")
    if documents is None:
        return []
    if not isinstance(documents, list) or not all(isinstance(d, dict) for d in documents):
        raise StoreCorruptError(f"{path} is not a list of policies; amqpd has left it as it "
                                "is. Move it aside to start without the stored policies.")
    return documents


def write_policies(path: Path, documents: list[dict[str, Any]]) -> None:
    """Replace the stored policies atomically and durably.

    Raises:
        OSError: the file could not be written (the old one is still in place).
    """
    write_json(path, documents)
