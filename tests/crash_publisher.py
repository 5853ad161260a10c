"""Publishes persistent messages with confirms and prints each confirmed id (crash tests).

Run as ``python crash_publisher.py PORT QUEUE``; it also starts a consumer that acks and
prints ``acked ID`` when ``--consume`` is given. Stops when the broker goes away.
"""

from __future__ import annotations

import sys
import threading

import pika

_OUTPUT = threading.Lock()


def report(line: str) -> None:
    """One whole line at a time: the publisher and consumer threads both write."""
    with _OUTPUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def publish(port: int, queue: str) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2)
    number = 0
    try:
        while True:
            number += 1
            channel.basic_publish("", queue, str(number).encode(), properties)
            report(f"confirmed {number}")
    except Exception:  # the broker was killed: that is the point
        return


def consume(port: int, queue: str) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    channel.basic_qos(prefetch_count=50)

    def on_message(ch: object, method: object, properties: object, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        report(f"acked {body.decode()}")

    channel.basic_consume(queue, on_message)
    try:
        channel.start_consuming()
    except Exception:
        return


if __name__ == "__main__":
    port, queue = int(sys.argv[1]), sys.argv[2]
    if "--consume" in sys.argv:
        threading.Thread(target=consume, args=(port, queue), daemon=True).start()
    publish(port, queue)
