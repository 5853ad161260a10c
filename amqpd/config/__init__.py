"""The broker configuration: YAML file, ``AMQPD_*`` environment and command line.

- :mod:`amqpd.config.settings` -- the typed settings the broker reads, with the defaults;
- :mod:`amqpd.config.model` -- the typed topology: vhosts, exchanges, queues, bindings, users,
  permissions (plain data);
- :mod:`amqpd.config.nodes` -- YAML nodes with ``FILE:LINE:COLUMN`` error messages;
- :mod:`amqpd.config.parse` -- the topology, users and permissions YAML into the model;
- :mod:`amqpd.config.definitions` -- RabbitMQ's definitions JSON into the model;
- :mod:`amqpd.config.schema` -- every setting: YAML path, type, range, variable, flag;
- :mod:`amqpd.config.loader` -- :func:`~amqpd.config.loader.load_settings` (precedence
  command line > environment > file > default) and ``config show``;
- :mod:`amqpd.config.logs` -- logging set-up, plain or JSON lines.

This layer describes; it never acts: it sits below the broker (which reads its settings)
and imports nothing of the broker, the sessions or the server.
"""
