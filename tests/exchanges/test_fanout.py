"""fanout exchange."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exchanges import get_exchange_type
from exchanges.fanout import FanoutExchange


@dataclass
class Msg:
    routing_key: str
    headers: Mapping[str, object] | None = None


def test_registered() -> None:
    assert get_exchange_type("fanout") is FanoutExchange


def test_routes_to_every_destination_ignoring_the_key() -> None:
    ex: FanoutExchange[str] = FanoutExchange({})
    ex.bind("q1", "", {})
    ex.bind("q2", "whatever", {})
    for key in ("", "a", "a.b.c", "#"):
        assert sorted(ex.route(Msg(key))) == ["q1", "q2"]


def test_no_bindings_routes_nowhere() -> None:
    ex: FanoutExchange[str] = FanoutExchange({})
    assert list(ex.route(Msg("k"))) == []


def test_destination_bound_twice_is_routed_once_until_both_go() -> None:
    ex: FanoutExchange[str] = FanoutExchange({})
    assert ex.bind("q", "a", {})
    assert ex.bind("q", "b", {})
    assert not ex.bind("q", "b", {})
    assert list(ex.route(Msg("x"))) == ["q"]
    assert len(ex) == 2
    assert ex.unbind("q", "a", {})
    assert list(ex.route(Msg("x"))) == ["q"]
    assert ex.unbind("q", "b", {})
    assert list(ex.route(Msg("x"))) == []
    assert not ex.unbind("q", "b", {})


def test_unbind_destination() -> None:
    ex: FanoutExchange[str] = FanoutExchange({})
    ex.bind("q1", "a", {})
    ex.bind("q1", "b", {})
    ex.bind("q2", "a", {})
    assert ex.unbind_destination("q1") == 2
    assert list(ex.route(Msg("x"))) == ["q2"]
    assert len(ex) == 1
