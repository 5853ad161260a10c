"""Compose example: publish tasks to the durable queue ``tasks`` (persistent, with confirms).

    AMQP_URL=amqp://app:secret@amqpd:5672/%2F python producer.py [--count N] [--interval S]

Reconnects when the broker goes away (a restart closes connections with 320
CONNECTION_FORCED); stops on SIGTERM/SIGINT or after --count messages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

import pika
from pika.exceptions import AMQPConnectionError, AMQPError

QUEUE = "tasks"
stopping = threading.Event()


def stop(signum: int, frame: object) -> None:
    stopping.set()


def say(text: str) -> None:
    sys.stdout.write(f"producer: {text}\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=0, help="messages to send (0 = forever)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    params = pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/%2F"))
    sent = 0
    while not stopping.is_set() and (args.count == 0 or sent < args.count):
        try:
            with pika.BlockingConnection(params) as connection:
                channel = connection.channel()
                channel.queue_declare(QUEUE, durable=True)
                channel.confirm_delivery()
                say(f"connected to {params.host}:{params.port}")
                while not stopping.is_set() and (args.count == 0 or sent < args.count):
                    body = json.dumps({"task": sent + 1, "at": time.time()}).encode()
                    channel.basic_publish("", QUEUE, body, pika.BasicProperties(
                        delivery_mode=pika.DeliveryMode.Persistent,
                        content_type="application/json"), mandatory=True)
                    sent += 1
                    say(f"sent task {sent} (confirmed)")
                    if args.count == 0 or sent < args.count:
                        connection.sleep(args.interval)
        except (AMQPConnectionError, AMQPError) as exc:
            if stopping.is_set():
                break
            say(f"connection lost ({exc!r}); retrying in 2 s")
            time.sleep(2)
    say(f"done, {sent} sent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
