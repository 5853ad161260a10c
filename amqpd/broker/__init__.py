"""The broker as the domain sees it: synchronous, I/O-free, with no notion of frames.

- :mod:`~amqpd.broker.broker` -- :class:`Broker`: settings, users, virtual hosts, alarms;
- :mod:`~amqpd.broker.vhost` -- a virtual host: its exchanges, queues and bindings;
- :mod:`~amqpd.broker.exchange`, :mod:`~amqpd.broker.routing` -- exchanges and the
  publish-time walk over them (the routing algorithms are the top-level ``exchanges``
  package);
- :mod:`~amqpd.broker.queue`, :mod:`~amqpd.broker.queue_arguments` -- a queue, its
  ``x-`` arguments and its dispatch loop;
- :mod:`~amqpd.broker.consumer` -- the small protocol a queue delivers to (the session's
  consumer implements it);
- :mod:`~amqpd.broker.message` -- a published message and its place in a queue;
- :mod:`~amqpd.broker.deadletter`, :mod:`~amqpd.broker.lease`,
  :mod:`~amqpd.broker.transaction` -- dead-lettering, lease extensions, tx;
- :mod:`~amqpd.broker.journal`, :mod:`~amqpd.broker.persistence`,
  :mod:`~amqpd.broker.paging` -- every durable change reported to the store, recovery, and
  long queue tails spilled to disk.

The session layer above talks to it through method calls; the broker talks back only
through the consumer protocol and callbacks that connections register (alarms).
"""
