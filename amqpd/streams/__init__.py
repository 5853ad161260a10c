"""Streams: ``x-queue-type: stream``, an append-only log read by many consumers.

Where it sits: above the broker layer and below the session layer. A stream is a kind of
queue to everything else (routing pushes to it, channels consume from it and settle their
deliveries), so :class:`~amqpd.streams.queue.StreamQueue` subclasses the broker's
``Queue``; the broker knows streams only through the queue-type factory that :func:`install`
registers in ``Broker.queue_types`` (as exchange types are plugged in), so no broker module
imports this package.

Durability: appends and group commits are written with ``os.write`` (they survive a
``kill -9`` at once) and fsync'd in the broker's group commit: the journal calls
:meth:`StreamTypes.prepare_sync` before it commits a batch and the flusher runs what it
returns in its worker thread before the store commit, so a publisher confirm that waits for
the batch also waits for the fsync of the stream.

Files: ``<data_dir>/streams/<vhost>/<queue>/`` with the segments (``*.seg``), their sparse
indexes (``*.idx``) and the groups' committed offsets (``groups.log``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from amqpd.protocol.errors import ChannelError
from amqpd.streams.arguments import parse_declare
from amqpd.streams.queue import StreamQueue

if TYPE_CHECKING:
    from amqpd.broker.broker import Broker
    from amqpd.broker.queue import Queue
    from amqpd.broker.vhost import VirtualHost

__all__ = ["StreamQueue", "StreamTypes", "install"]


def _file_name(name: str) -> str:
    """A directory name for a vhost or queue name: readable when it can be, unique always."""
    quoted = quote(name, safe="") or "%"
    if len(quoted) > 120:
        return quoted[:80] + "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
    return quoted


class StreamTypes:
    """The streams of one broker: the ``stream`` queue type and their durability."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.streams: set[StreamQueue] = set()

    def directory_for(self, vhost: str, name: str) -> Path:
        """Where a stream keeps its files."""
        return self.directory / _file_name(vhost) / _file_name(name)

    def create(
        self, vhost: VirtualHost, name: str, server_named: bool, durable: bool,
        exclusive: bool, auto_delete: bool, arguments: Mapping[str, object],
    ) -> Queue:
        """queue.declare of a new stream (the vhost's queue-type factory).

        Raises:
            ChannelError: 406 with RabbitMQ's texts for what a stream cannot be.
        """
        if server_named or not name:
            raise ChannelError(
                406, "Cannot declare a server-named queue for type rabbit_stream_queue")
        if name.startswith("amq."):
            raise ChannelError(403, f"queue name '{name}' contains reserved prefix 'amq.*'")
        describe = f"queue '{name}' in vhost '{vhost.name}'"
        settings = parse_declare(describe, durable, exclusive, auto_delete, arguments)
        queue = StreamQueue(vhost, name, dict(arguments), settings,
                            self.directory_for(vhost.name, name))
        syncs = vhost.journal.external_syncs
        if self.prepare_sync not in syncs:
            syncs.append(self.prepare_sync)
        self.streams.add(queue)
        return queue

    def prepare_sync(self) -> Callable[[], None] | None:
        """On the event loop, before a batch commits: write what the streams buffered and
        return the fsync to run in the worker thread (None when nothing was written)."""
        handles: list[int] = []
        for stream in list(self.streams):
            if stream.deleted:
                self.streams.discard(stream)
                continue
            handles += stream.sync_handles()
        if not handles:
            return None

        def sync() -> None:
            error: OSError | None = None
            for handle in handles:
                try:
                    os.fsync(handle)
                except OSError as exc:
                    error = exc
                finally:
                    os.close(handle)
            if error is not None:
                raise error

        return sync

    def close(self) -> None:
        """Flush and close every stream's files (shutdown; fsync'd by the last commit)."""
        for stream in self.streams:
            if not stream.deleted:
                stream.close()


def install(broker: Broker, directory: Path) -> StreamTypes:
    """Make ``x-queue-type: stream`` available in every vhost of ``broker``; streams keep
    their files under ``directory``."""
    types = StreamTypes(directory)
    broker.queue_types["stream"] = types.create
    return types
