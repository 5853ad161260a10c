"""Exchange types by name: the built-ins plus third-party plugins.

A plugin is any installed distribution with an entry point in the ``amqpd.exchanges``
group, named after the exchange type and pointing at an :class:`ExchangeType` subclass::

    [project.entry-points."amqpd.exchanges"]
    x-recent-history = "my_plugin.exchange:RecentHistory"

Plugins are discovered once, on the first lookup, so importing this package stays cheap and
a broken plugin can only cost a log line: it is skipped, never fatal. Built-in and
explicitly registered types win over a plugin of the same name.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any, TypeVar

from exchanges.base import ExchangeType

ENTRY_POINT_GROUP = "amqpd.exchanges"

log = logging.getLogger(__name__)

REGISTRY: dict[str, type[ExchangeType[Any]]] = {}

T = TypeVar("T", bound=type[ExchangeType[Any]])

_plugins_loaded = False


def register(cls: T) -> T:
    """Class decorator: make ``cls`` available under ``cls.type_name``."""
    name = getattr(cls, "type_name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty str type_name to be registered")
    REGISTRY[name] = cls
    return cls


def get_exchange_type(name: str) -> type[ExchangeType[Any]] | None:
    """The exchange type called ``name``, or None if nothing provides it."""
    if not _plugins_loaded:
        load_plugins()
    return REGISTRY.get(name)


def load_plugins() -> None:
    """Register every ``amqpd.exchanges`` entry point (done once, on first lookup)."""
    global _plugins_loaded
    _plugins_loaded = True
    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # broken metadata on sys.path must not stop the broker
        log.exception("could not list %s entry points; no exchange plugins loaded",
                      ENTRY_POINT_GROUP)
        return
    for entry_point in found:
        if entry_point.name in REGISTRY:
            log.warning("exchange plugin %r (%s) ignored: type %r already exists",
                        entry_point.name, entry_point.value, entry_point.name)
            continue
        try:
            cls = entry_point.load()
        except Exception:  # any import-time failure of third-party code is skipped
            log.exception("exchange plugin %r (%s) failed to load; skipped",
                          entry_point.name, entry_point.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, ExchangeType)):
            log.error("exchange plugin %r (%s) is not an ExchangeType subclass; skipped",
                      entry_point.name, entry_point.value)
            continue
        REGISTRY[entry_point.name] = cls
        log.info("loaded exchange plugin %r from %s", entry_point.name, entry_point.value)
