"""Compose example: consume the durable queue ``tasks``, one at a time, ack after the work.

    AMQP_URL=amqp://app:secret@amqpd:5672/%2F python worker.py [--count N] [--work S]

A task taken but not acked when the worker or the broker stops comes back (redelivered).
Reconnects when the broker goes away; stops on SIGTERM/SIGINT or after --count tasks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import pika
from pika.exceptions import AMQPConnectionError, AMQPError

QUEUE = "tasks"


def say(text: str) -> None:
    sys.stdout.write(f"worker: {text}\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=0, help="tasks to handle (0 = forever)")
    parser.add_argument("--work", type=float, default=0.2, help="seconds of 'work' per task")
    args = parser.parse_args()
    params = pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/%2F"))
    done = 0
    state: dict[str, Any] = {"stopping": False, "channel": None}

    def stop(signum: int, frame: object) -> None:
        state["stopping"] = True
        if state["channel"] is not None:
            state["channel"].stop_consuming()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal done
        time.sleep(args.work)
        channel.basic_ack(method.delivery_tag)
        done += 1
        again = " (redelivered)" if method.redelivered else ""
        say(f"handled {body.decode(errors='replace')}{again}")
        if args.count and done >= args.count:
            channel.stop_consuming()

    while not state["stopping"] and (args.count == 0 or done < args.count):
        try:
            with pika.BlockingConnection(params) as connection:
                channel = connection.channel()
                channel.queue_declare(QUEUE, durable=True)
                channel.basic_qos(prefetch_count=1)
                channel.basic_consume(QUEUE, on_message)
                state["channel"] = channel
                say(f"connected to {params.host}:{params.port}, waiting for tasks")
                channel.start_consuming()
                state["channel"] = None
        except (AMQPConnectionError, AMQPError) as exc:
            state["channel"] = None
            if state["stopping"]:
                break
            say(f"connection lost ({exc!r}); retrying in 2 s")
            time.sleep(2)
    say(f"done, {done} handled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
