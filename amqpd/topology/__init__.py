"""Desired state applied to a live broker, and the live broker's state written back out.

- :mod:`amqpd.topology.apply` -- plan a topology against a live broker, then apply it all or
  nothing; :func:`~amqpd.topology.apply.configure_broker` wires settings into a broker;
- :mod:`amqpd.topology.export` -- the live topology of a broker as YAML;
- :mod:`amqpd.topology.reload` -- SIGHUP: re-read the configuration and apply the changes.

Reading the files (YAML, RabbitMQ's definitions JSON) into the typed model is
:mod:`amqpd.config`'s job; this package only talks to the broker layer's narrow API and
never to the session layer.
"""
