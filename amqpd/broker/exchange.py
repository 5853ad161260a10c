"""The broker's view of an exchange: its declaration plus a routing type from ``exchanges``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exchanges import ExchangeType


class Exchange:
    """A declared exchange. ``kind`` does the routing; this object holds the declaration."""

    __slots__ = (
        "alternate",
        "arguments",
        "auto_delete",
        "durable",
        "internal",
        "kind",
        "name",
        "type_name",
        "vhost_name",
    )

    def __init__(
        self,
        name: str,
        vhost_name: str,
        type_name: str,
        kind: ExchangeType[Any] | None,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, object] | None = None,
    ):
        self.name = name
        self.vhost_name = vhost_name
        self.type_name = type_name
        # None only for the default exchange, which routes by queue name without bindings.
        self.kind = kind
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments: Mapping[str, object] = dict(arguments or {})
        alternate = self.arguments.get("alternate-exchange")
        self.alternate = alternate if isinstance(alternate, str) and alternate else None

    def __repr__(self) -> str:
        return f"<Exchange {self.name!r} type={self.type_name}>"

    @property
    def is_default(self) -> bool:
        """True for the nameless default exchange."""
        return self.kind is None

    def describe(self) -> str:
        """``exchange 'name' in vhost '/'``, for reply texts."""
        return f"exchange '{self.name}' in vhost '{self.vhost_name}'"
