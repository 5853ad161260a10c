"""Benchmark of the persistent store (amqpd/store/sqlite.py); not a test.

    .venv/bin/python interop/bench_store.py                   # 1,000,000 messages for load
    .venv/bin/python interop/bench_store.py --messages 100000 --dir /some/disk

Prints one JSON line per measurement on stdout:

- ``commit``: msgs/s committing 256-byte messages (one entry each) in batches of 1, 10, 100,
  1000 -- every commit is one fsync'd transaction -- with commit latency percentiles;
- ``ack``: the same messages deleted (acked) in batches of the same size;
- ``fill``/``load``: ``--messages`` messages stored, the file reopened, ``load()`` timed with
  and without bodies; ``check_integrity`` timed;
- ``drain``: every message acked; file size right after, after further light traffic (the
  per-commit compaction), after ``compact()`` and after ``close()``;
- ``steady``: a standing backlog with as many publishes as acks per commit; the file size
  every few rounds (it should stop growing).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amqpd.store import Batch, SQLiteStore

QUEUE = ("/", "bench")
HEADER = bytes.fromhex("003c0000000000000000010098000a746578742f706c61696e02")  # 26 bytes


def emit(scenario: str, **fields: object) -> None:
    print(json.dumps({"scenario": scenario, **fields}), flush=True)


class Producer:
    """Messages with increasing ids and seqs on one queue; acks from the head."""

    def __init__(self, store: SQLiteStore, body_size: int) -> None:
        self.store = store
        self.body = os.urandom(body_size)
        self.head = self.tail = 1

    def publish(self, count: int) -> None:
        batch = Batch()
        for _ in range(count):
            batch.put_message(self.tail, "amq.direct", "bench", HEADER, self.body)
            batch.put_entry(QUEUE, self.tail, self.tail)
            self.tail += 1
        self.store.commit(batch)

    def ack(self, count: int) -> None:
        batch = Batch()
        for _ in range(min(count, self.tail - self.head)):
            batch.delete_entry(QUEUE, self.head)
            self.head += 1
        self.store.commit(batch)


def timed_loop(
    step: Callable[[], None], per_step: int, limit: int, seconds: float
) -> dict[str, float]:
    """Run ``step`` until ``limit`` items or ``seconds`` elapsed; rate and latency."""
    latencies = []
    done = 0
    start = time.perf_counter()
    while done < limit and time.perf_counter() - start < seconds:
        began = time.perf_counter()
        step()
        latencies.append(time.perf_counter() - began)
        done += per_step
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "messages": done,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(done / elapsed),
        "commits": len(latencies),
        "commit_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "commit_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


def bench_commit(directory: Path, body_size: int, seconds: float) -> None:
    for batch_size in (1, 10, 100, 1000):
        path = directory / f"commit-{batch_size}.sqlite3"
        with SQLiteStore(path) as store:
            producer = Producer(store, body_size)
            result = timed_loop(
                functools.partial(producer.publish, batch_size),
                batch_size,
                10**9,
                seconds,
            )
            emit("commit", batch=batch_size, body_bytes=body_size, **result)
            published = producer.tail - 1
            result = timed_loop(
                functools.partial(producer.ack, batch_size),
                batch_size,
                published,
                seconds,
            )
            emit("ack", batch=batch_size, **result)
        for leftover in directory.glob(f"commit-{batch_size}.sqlite3*"):
            leftover.unlink()


def sizes(store: SQLiteStore) -> dict[str, int]:
    stats = store.stats()
    return {
        "file_bytes": stats["file_bytes"],
        "wal_bytes": stats["wal_bytes"],
        "free_pages": stats["freelist_count"],
    }


def bench_load(directory: Path, messages: int, body_size: int) -> None:
    path = directory / "load.sqlite3"
    store = SQLiteStore(path)
    producer = Producer(store, body_size)
    start = time.perf_counter()
    while producer.tail <= messages:
        producer.publish(min(1000, messages - producer.tail + 1))
    elapsed = time.perf_counter() - start
    emit(
        "fill",
        messages=messages,
        seconds=round(elapsed, 2),
        msgs_per_s=round(messages / elapsed),
        **sizes(store),
    )
    store.close()
    emit("closed", file_bytes=path.stat().st_size)

    for with_bodies in (False, True):
        gc.collect()
        start = time.perf_counter()
        store = SQLiteStore(path)
        opened = time.perf_counter() - start
        snapshot = store.load(with_bodies=with_bodies)
        loaded = time.perf_counter() - start - opened
        assert len(snapshot.messages) == messages == len(snapshot.entries[QUEUE])
        emit(
            "load",
            messages=messages,
            with_bodies=with_bodies,
            open_s=round(opened, 3),
            load_s=round(loaded, 2),
            max_rss_mib=_max_rss_mib(),
        )
        del snapshot
        if with_bodies:
            start = time.perf_counter()
            store.check_integrity()
            emit("check_integrity", seconds=round(time.perf_counter() - start, 2))
        else:
            ids = list(range(1, min(messages, 1000) + 1))
            start = time.perf_counter()
            bodies = store.read_bodies(ids)
            emit(
                "read_bodies", count=len(bodies), ms=round((time.perf_counter() - start) * 1000, 2)
            )
        store.close()

    store = SQLiteStore(path)
    producer = Producer(store, body_size)
    producer.tail = messages + 1
    emit("drain_before", **sizes(store))
    start = time.perf_counter()
    while producer.head < producer.tail:
        producer.ack(1000)
    elapsed = time.perf_counter() - start
    emit(
        "drain",
        messages=messages,
        seconds=round(elapsed, 2),
        acks_per_s=round(messages / elapsed),
        **sizes(store),
    )
    for _ in range(100):  # light traffic: each commit also returns some free pages
        producer.publish(1)
        producer.ack(1)
    emit("drain_after_100_light_commits", **sizes(store))
    start = time.perf_counter()
    freed = store.compact()
    emit(
        "drain_after_compact",
        pages=freed,
        seconds=round(time.perf_counter() - start, 2),
        **sizes(store),
    )
    store.close()
    emit("drain_after_close", file_bytes=path.stat().st_size)
    path.unlink()


def bench_steady(directory: Path, body_size: int, backlog: int, rounds: int) -> None:
    path = directory / "steady.sqlite3"
    with SQLiteStore(path) as store:
        producer = Producer(store, body_size)
        for _ in range(backlog // 1000):
            producer.publish(1000)
        start = time.perf_counter()
        for number in range(1, rounds + 1):
            producer.publish(500)
            producer.ack(500)
            if number % (rounds // 10 or 1) == 0:
                emit(
                    "steady",
                    round=number,
                    through=number * 500,
                    backlog=backlog,
                    seconds=round(time.perf_counter() - start, 1),
                    **sizes(store),
                )
    path.unlink()


def _max_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages for load/drain")
    parser.add_argument("--body-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="per commit/ack measurement")
    parser.add_argument("--backlog", type=int, default=20_000, help="steady-state backlog")
    parser.add_argument("--rounds", type=int, default=1000, help="steady-state commits")
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["commit", "load", "steady"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        directory = Path(name)
        emit(
            "setup",
            directory=str(directory),
            python=sys.version.split()[0],
            sqlite=__import__("sqlite3").sqlite_version,
        )
        if "commit" not in args.skip:
            bench_commit(directory, args.body_size, args.seconds)
        if "load" not in args.skip:
            bench_load(directory, args.messages, args.body_size)
        if "steady" not in args.skip:
            bench_steady(directory, args.body_size, args.backlog, args.rounds)


if __name__ == "__main__":
    main()
