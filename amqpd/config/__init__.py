"""The broker configuration: YAML file, ``AMQPD_*`` environment and command line.

- :mod:`amqpd.config.nodes` -- YAML nodes with ``FILE:LINE:COLUMN`` error messages;
- :mod:`amqpd.config.schema` -- every setting: YAML path, type, range, variable, flag;
- :mod:`amqpd.config.loader` -- :func:`~amqpd.config.loader.load_settings` (precedence
  command line > environment > file > default) and ``config show``;
- :mod:`amqpd.config.logs` -- logging set-up, plain or JSON lines.

Kept free of imports so that :mod:`amqpd.topology.parse` can use :mod:`amqpd.config.nodes`
without an import cycle.
"""
