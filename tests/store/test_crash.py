"""Crash safety: ``kill -9`` a process that is committing batches, then reopen the file.

Every batch the writer reported committed must be there in full, and the file must hold
exactly the state after batch L or L + 1 (L = the last one reported; L + 1 may have committed
just before the kill) -- never part of a batch. Each round continues on the same file, so
recovery is followed by more writing.

Run as ``python -m tests.store.test_crash PATH START`` it is the writer: it replays batches
1..START-1 into its model only, then commits batch START, START + 1, ... printing each number.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from amqpd.store import Batch, BindingRecord, QueueRecord, SQLiteStore
from tests.store import Model, canonical

REPO = Path(__file__).resolve().parents[2]
QUEUES = [("/", f"q{i}") for i in range(4)]
ROUNDS = 3


def make_batch(number: int, model: Model) -> Batch:
    """Batch ``number``: deterministic given the number and the model state it starts from."""
    rng = random.Random(number)
    batch = Batch()
    if number % 13 == 0:  # delete and re-declare a queue: a cascade in the middle of traffic
        vhost, name = rng.choice(QUEUES)
        model.apply(batch, "delete_queue", vhost, name)
        model.apply(batch, "put_queue", QueueRecord(vhost, name, True, False, {"n": number}))
    if number % 7 == 0:
        binding = BindingRecord("/", "amq.topic", "queue", rng.choice(QUEUES)[1], "k", {})
        model.apply(batch, "put_binding" if number % 2 else "delete_binding", binding)
    for _ in range(rng.randint(1, 20)):
        _publish(rng, number, batch, model)
    live = sorted((q, seq) for q, rows in model.entries.items() for seq in rows)
    for queue, seq in rng.sample(live, k=min(len(live), rng.randint(0, 15))):
        if rng.random() < 0.8:
            model.apply(batch, "delete_entry", queue, seq)
        else:
            model.apply(batch, "update_entry", queue, seq, rng.randint(1, 9), True)
    return batch


def _publish(rng: random.Random, number: int, batch: Batch, model: Model) -> None:
    mid = number * 100 + len(batch)  # unique: fewer than 100 operations per batch
    size = 20_000 if rng.random() < 0.05 else rng.randint(0, 2000)
    body = rng.randbytes(size)
    model.apply(batch, "put_message", mid, "amq.topic", f"k.{number}", b"hdr%d" % mid, body)
    for queue in rng.sample(QUEUES, k=rng.randint(1, 2)):
        seq = max(model.entries.get(queue, {}), default=0) + 1
        model.apply(batch, "put_entry", queue, seq, mid, float(number))


def writer(path: Path, start: int) -> None:
    model = Model()
    for number in range(1, start):
        make_batch(number, model)
    store = SQLiteStore(path)
    number = start
    while True:
        store.commit(make_batch(number, model))
        print(number, flush=True)
        number += 1


def expected_states(last: int) -> dict[int, object]:
    """The canonical snapshot after each batch 0..last + 1."""
    model = Model()
    states: dict[int, object] = {0: canonical(model.snapshot())}
    for number in range(1, last + 2):
        make_batch(number, model)
        states[number] = canonical(model.snapshot())
    return states


def run_and_kill(path: Path, start: int, rng: random.Random) -> int:
    """Run the writer, kill -9 it after a random number of commits; the last one it reported."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.store.test_crash", str(path), str(start)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    wanted = rng.randint(3, 40)
    reported = start - 1
    for line in process.stdout:
        reported = int(line)
        if reported - start + 1 >= wanted:
            break
    time.sleep(rng.uniform(0, 0.02))  # land the kill anywhere inside the next commit
    process.kill()  # SIGKILL
    for line in process.stdout:  # lines written before it died
        reported = int(line)
    process.wait(timeout=10)
    assert process.returncode == -9
    return reported


def test_kill_9_never_loses_a_reported_batch_nor_shows_half_of_one(tmp_path: Path) -> None:
    path = tmp_path / "amqpd.sqlite3"
    rng = random.Random(20240229)
    start = 1
    for _ in range(ROUNDS):
        reported = run_and_kill(path, start, rng)
        assert reported >= start
        states = expected_states(reported)
        with SQLiteStore(path) as store:
            found = canonical(store.load())
        matches = [number for number in (reported, reported + 1) if states[number] == found]
        assert matches, f"after batch {reported} the file holds neither it nor the next batch"
        start = matches[-1] + 1


if __name__ == "__main__":
    writer(Path(sys.argv[1]), int(sys.argv[2]))
