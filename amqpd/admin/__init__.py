"""The management HTTP API (RabbitMQ's ``/api``) and ``amqpd ctl`` on top of it.

A thin layer over the live broker: every answer is computed from the broker's own objects
when it is asked for (no statistics database, nothing copied that could drift), and rates
come from monotonic counters sampled into small rings (:mod:`~amqpd.admin.rates`).

- :mod:`~amqpd.admin.app` -- the Starlette application and the uvicorn server that runs
  inside the broker's event loop;
- :mod:`~amqpd.admin.routes` -- routing on the raw path (``%2F`` vhosts) and the handler table;
- :mod:`~amqpd.admin.auth` -- Basic authentication and RabbitMQ's user tags;
- :mod:`~amqpd.admin.readmodel` -- broker objects rendered as RabbitMQ's JSON;
- :mod:`~amqpd.admin.paging` -- ``sort``, ``columns``, ``page`` and friends;
- ``api_*`` -- the endpoints, one module per family (``api_dashboard``: what the web
  dashboard reads beyond RabbitMQ's API);
- :mod:`~amqpd.admin.dashboard` -- the web dashboard at ``/`` (its files in ``static/``);
- :mod:`~amqpd.admin.ctl` -- the rabbitmqctl-like client (``amqpd ctl``).
"""
