"""The sans-IO AMQP session: bytes in, bytes out, no socket and no event loop.

- :mod:`~amqpd.session.connection` -- :class:`Connection`: handshake, channel 0, heartbeats,
  output buffering and backpressure flags the shell reads;
- :mod:`~amqpd.session.channel` -- :class:`Channel`: basic.* methods, content assembly,
  unacked tracking, confirms;
- :mod:`~amqpd.session.declarations` -- exchange.* and queue.* handlers (a mixin of Channel);
- :mod:`~amqpd.session.consumer` -- one basic.consume subscription with its credit.
"""
