"""amqpd: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amqpd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
