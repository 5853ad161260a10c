"""The exchange-type registry, entry-point plugins, and the ExchangeType defaults."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import exchanges
from exchanges import (
    REGISTRY,
    Binding,
    ExchangeError,
    ExchangeType,
    NotAllowed,
    PreconditionFailed,
    Routable,
    get_exchange_type,
    register,
    registry,
)

PLUGIN_MODULE = '''
from exchanges import Binding, ExchangeType


class SetExchange(ExchangeType):
    """Routes every message everywhere; relies on the base-class defaults."""

    type_name = "x-set"

    def __init__(self, arguments):
        super().__init__(arguments)
        self._bindings = set()

    def bind(self, destination, routing_key, arguments):
        binding = Binding(destination, routing_key, arguments)
        if binding in self._bindings:
            return False
        self._bindings.add(binding)
        return True

    def unbind(self, destination, routing_key, arguments):
        binding = Binding(destination, routing_key, arguments)
        if binding not in self._bindings:
            return False
        self._bindings.remove(binding)
        return True

    def route(self, message):
        return {b.destination for b in self._bindings}

    def bindings(self):
        return iter(list(self._bindings))


NOT_A_TYPE = 42
'''

ENTRY_POINTS = """\
[amqpd.exchanges]
x-fake = fake_amqpd_plugin:SetExchange
x-broken = fake_amqpd_broken:Anything
x-missing-attr = fake_amqpd_plugin:DoesNotExist
x-not-a-type = fake_amqpd_plugin:NOT_A_TYPE
direct = fake_amqpd_plugin:SetExchange
"""


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(REGISTRY)
    saved_loaded = registry._plugins_loaded
    registry._plugins_loaded = False
    try:
        yield
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)
        registry._plugins_loaded = saved_loaded
        for name in ("fake_amqpd_plugin", "fake_amqpd_broken"):
            sys.modules.pop(name, None)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None) -> Path:
    """A fake installed distribution: a module plus a dist-info with entry points."""
    (tmp_path / "fake_amqpd_plugin.py").write_text(PLUGIN_MODULE)
    (tmp_path / "fake_amqpd_broken.py").write_text("raise RuntimeError('plugin bug')\n")
    info = tmp_path / "fake_amqpd_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-amqpd-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_types_are_registered() -> None:
    assert {"direct", "fanout", "topic", "headers", "x-rules", "x-consistent-hash"} <= set(
        REGISTRY
    )
    for name in ("direct", "fanout", "topic", "headers", "x-rules", "x-consistent-hash"):
        cls = get_exchange_type(name)
        assert cls is not None
        assert cls.type_name == name
        assert len(cls({})) == 0


def test_unknown_type_is_none() -> None:
    assert get_exchange_type("x-no-such-type") is None


def test_public_names() -> None:
    for name in ("REGISTRY", "register", "get_exchange_type", "ExchangeType", "Binding",
                 "ExchangeError", "PreconditionFailed", "NotAllowed", "Routable"):
        assert name in exchanges.__all__
        assert hasattr(exchanges, name)


def test_error_reply_codes_and_text() -> None:
    assert PreconditionFailed("x").reply_code == 406
    assert NotAllowed("x").reply_code == 530
    assert ExchangeError("why").text == "why"
    assert issubclass(PreconditionFailed, ExchangeError)


def test_register_decorator(clean_registry: None) -> None:
    @register
    class Custom(ExchangeType[str]):
        type_name = "x-custom"

        def bind(self, destination: str, routing_key: str,
                 arguments: Mapping[str, object]) -> bool:
            return True

        def unbind(self, destination: str, routing_key: str,
                   arguments: Mapping[str, object]) -> bool:
            return True

        def route(self, message: Routable) -> Collection[str]:
            return ()

        def bindings(self) -> Iterator[Binding[str]]:
            return iter(())

    assert get_exchange_type("x-custom") is Custom


def test_register_needs_a_type_name(clean_registry: None) -> None:
    class Nameless:
        pass

    with pytest.raises(TypeError, match="type_name"):
        register(Nameless)  # type: ignore[type-var]


def test_entry_point_plugin_is_found(plugin_dir: Path) -> None:
    cls = get_exchange_type("x-fake")
    assert cls is not None
    assert cls.__name__ == "SetExchange"


def test_broken_plugins_are_logged_and_skipped(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="exchanges.registry"):
        assert get_exchange_type("x-broken") is None
    assert get_exchange_type("x-missing-attr") is None
    assert get_exchange_type("x-not-a-type") is None
    assert get_exchange_type("x-fake") is not None  # the good one still loaded
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "'x-broken'" in messages and "failed to load" in messages
    assert "'x-missing-attr'" in messages
    assert "not an ExchangeType subclass" in messages
    assert "plugin bug" in caplog.text  # the traceback is logged


def test_builtin_wins_over_plugin_of_the_same_name(plugin_dir: Path) -> None:
    from exchanges.direct import DirectExchange

    assert get_exchange_type("direct") is DirectExchange


def test_plugins_are_discovered_once(plugin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = importlib.metadata.entry_points

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["group"])
        return real(**kwargs)

    monkeypatch.setattr("exchanges.registry.entry_points", counting)
    get_exchange_type("x-fake")
    get_exchange_type("x-nothing")
    get_exchange_type("topic")
    assert calls == ["amqpd.exchanges"]


def test_plugin_uses_base_class_defaults(plugin_dir: Path) -> None:
    cls = get_exchange_type("x-fake")
    assert cls is not None
    ex = cls({})
    ex.bind("q1", "a", {})
    ex.bind("q1", "b", {})
    ex.bind("q2", "a", {})
    assert len(ex) == 3
    assert ex.unbind_destination("q1") == 2
    assert len(ex) == 1
    assert set(ex.route(_Msg())) == {"q2"}


def test_entry_point_listing_failure_is_survived(
    clean_registry: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise OSError("bad metadata")

    monkeypatch.setattr("exchanges.registry.entry_points", broken)
    assert get_exchange_type("topic") is not None
    assert "no exchange plugins loaded" in caplog.text


class _Msg:
    routing_key = ""
    headers = None
