"""Prometheus metrics: RabbitMQ's ``rabbitmq_prometheus`` endpoints and names, plus amqpd's own.

A separate HTTP listener (RabbitMQ's 15692) served by uvicorn in the broker's event loop, like
the management API. Nothing is sampled or stored between scrapes: every family is built from
the live broker when Prometheus asks (``prometheus_client`` custom collectors), so a broker
nobody scrapes pays nothing beyond the event counters it keeps anyway.

- :mod:`~amqpd.metrics.families` -- the metric families, RabbitMQ's names, types and labels;
- :mod:`~amqpd.metrics.commits` -- the store's group-commit latency histogram and fsync count
  (recorded by the I/O shell, read at scrape time);
- :mod:`~amqpd.metrics.exposition` -- the per-object families' fast path (column-wise
  families, a renderer proved equal to ``generate_latest`` by tests/test_metrics_exposition.py);
- :mod:`~amqpd.metrics.app` -- the endpoints and the listener.
"""
