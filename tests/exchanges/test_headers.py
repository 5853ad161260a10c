"""headers exchange: RabbitMQ's x-match modes and value equality, plus a naive-model property."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanges import PreconditionFailed, get_exchange_type
from exchanges.headers import HeadersExchange
from exchanges.values import match_key


@dataclass
class Msg:
    headers: Mapping[str, object] | None
    routing_key: str = ""


def make(**bindings: Mapping[str, object]) -> HeadersExchange[str]:
    ex: HeadersExchange[str] = HeadersExchange({})
    for destination, arguments in bindings.items():
        ex.bind(destination, "", arguments)
    return ex


def routed(ex: HeadersExchange[str], headers: Mapping[str, object] | None) -> list[str]:
    return sorted(ex.route(Msg(headers)))


def matches(arguments: Mapping[str, object], headers: Mapping[str, object] | None) -> bool:
    return routed(make(q=arguments), headers) == ["q"]


def test_registered() -> None:
    assert get_exchange_type("headers") is HeadersExchange


def test_all_is_the_default_and_needs_every_header() -> None:
    arguments = {"format": "pdf", "type": "report"}
    assert matches(arguments, {"format": "pdf", "type": "report"})
    assert matches(arguments, {"format": "pdf", "type": "report", "extra": 1})
    assert not matches(arguments, {"format": "pdf"})
    assert not matches(arguments, {"format": "pdf", "type": "log"})
    assert matches({"x-match": "all", **arguments}, {"format": "pdf", "type": "report"})


def test_any_needs_one_header() -> None:
    arguments = {"x-match": "any", "format": "pdf", "type": "report"}
    assert matches(arguments, {"format": "pdf"})
    assert matches(arguments, {"type": "report", "format": "zip"})
    assert not matches(arguments, {"format": "zip"})
    assert not matches(arguments, {})
    assert not matches(arguments, None)


def test_x_prefixed_binding_keys_are_ignored_by_all_and_any() -> None:
    assert matches({"x-match": "all", "x-tenant": "t1", "a": 1}, {"a": 1})
    assert not matches({"x-match": "any", "x-tenant": "t1"}, {"x-tenant": "t1"})
    assert matches({"x-match": "all", "x-tenant": "t1"}, {})  # nothing left to compare


def test_with_x_variants_count_x_prefixed_keys() -> None:
    assert not matches({"x-match": "all-with-x", "x-tenant": "t1", "a": 1}, {"a": 1})
    assert matches({"x-match": "all-with-x", "x-tenant": "t1", "a": 1},
                   {"a": 1, "x-tenant": "t1"})
    assert matches({"x-match": "any-with-x", "x-tenant": "t1", "a": 1}, {"x-tenant": "t1"})
    assert not matches({"x-match": "any-with-x", "x-tenant": "t1"}, {"x-tenant": "t2"})


def test_x_match_itself_never_counts() -> None:
    assert matches({"x-match": "all-with-x"}, {})
    assert not matches({"x-match": "any-with-x"}, {"x-match": "any-with-x"})


def test_void_value_matches_presence_only() -> None:
    arguments = {"a": None}
    assert matches(arguments, {"a": "anything"})
    assert matches(arguments, {"a": None})
    assert matches(arguments, {"a": 0})
    assert not matches(arguments, {"b": 1})
    assert not matches(arguments, None)
    assert matches({"x-match": "any", "a": None, "b": 1}, {"a": 5})


def test_all_with_nothing_to_compare_matches_every_message() -> None:
    assert matches({}, None)
    assert matches({}, {})
    assert matches({}, {"a": 1})


def test_any_with_nothing_to_compare_matches_nothing() -> None:
    assert not matches({"x-match": "any"}, {"a": 1})
    assert not matches({"x-match": "any"}, None)


def test_message_without_headers() -> None:
    ex = make(q1={"a": 1}, q2={}, q3={"x-match": "any", "a": 1})
    assert routed(ex, None) == ["q2"]
    assert routed(ex, {}) == ["q2"]


@pytest.mark.parametrize(("bound", "sent", "expected"), [
    (1, 1, True),
    (1, 1.0, True),  # Erlang ==: integers and floats compare by value
    (1.5, 1.5, True),
    (1, True, False),  # booleans are not numbers
    (True, 1, False),
    (True, True, True),
    (False, 0, False),
    ("a", b"a", True),  # longstr and byte array are both binaries
    ("é", "é".encode(), True),
    ("1", 1, False),
    (Decimal("1.5"), Decimal("1.5"), True),
    (Decimal("1.0"), Decimal("1"), False),  # decimals compare digits and scale
    (Decimal("1"), 1, False),
    (datetime(2024, 1, 1, tzinfo=UTC), 1704067200, True),  # timestamps are seconds
    (datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC), True),
    ({"k": [1, "x"]}, {"k": [1, "x"]}, True),
    ({"k": 1}, {"k": True}, False),  # nested tables compare exactly
    ([1, 2], [1, 2], True),
    ([1, 2], [2, 1], False),
    ("a", None, False),
])
def test_value_equality_follows_rabbitmq(bound: object, sent: object, expected: bool) -> None:
    assert matches({"h": bound}, {"h": sent}) is expected


def test_invalid_x_match_value() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    with pytest.raises(PreconditionFailed) as info:
        ex.bind("q", "", {"x-match": "foo"})
    assert info.value.text == (
        "Invalid x-match field value 'foo'; expected all, any, all-with-x, or any-with-x"
    )
    assert info.value.reply_code == 406
    assert len(ex) == 0


def test_invalid_x_match_type() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    with pytest.raises(PreconditionFailed, match="Invalid x-match field type"):
        ex.bind("q", "", {"x-match": 1})
    with pytest.raises(PreconditionFailed):
        ex.bind("q", "", {"x-match": b"all"})


def test_routing_key_is_ignored() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    ex.bind("q", "some-key", {"a": 1})
    assert list(ex.route(Msg({"a": 1}, routing_key="other"))) == ["q"]


def test_equivalent_argument_sets_share_one_matcher() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    assert ex.bind("q1", "", {"a": 1, "b": "x"})
    assert ex.bind("q2", "", {"b": "x", "a": 1})
    assert ex.bind("q3", "", {"a": 1.0, "b": "x", "x-note": "ignored"})  # another binding
    assert len(ex._matchers) == 1
    assert routed(ex, {"a": 1, "b": "x"}) == ["q1", "q2", "q3"]
    assert ex.unbind("q1", "", {"a": 1, "b": "x"})
    assert routed(ex, {"a": 1, "b": "x"}) == ["q2", "q3"]
    assert ex.unbind_destination("q2") == 1
    assert ex.unbind_destination("q3") == 1
    assert ex._matchers == {}
    assert ex._index == {}
    assert not ex._always


def test_same_destination_twice_through_one_matcher() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    assert ex.bind("q", "k1", {"a": 1})
    assert ex.bind("q", "k2", {"a": 1})
    assert ex.unbind("q", "k1", {"a": 1})
    assert routed(ex, {"a": 1}) == ["q"]
    assert ex.unbind("q", "k2", {"a": 1})
    assert routed(ex, {"a": 1}) == []


def test_each_destination_once() -> None:
    ex: HeadersExchange[str] = HeadersExchange({})
    ex.bind("q", "", {"a": 1})
    ex.bind("q", "", {"x-match": "any", "b": 2})
    ex.bind("q", "", {})
    assert list(ex.route(Msg({"a": 1, "b": 2}))) == ["q"]


def test_odd_header_values_never_raise() -> None:
    ex = make(q={"x-match": "any", "a": 1, "b": None})
    odd: list[object] = [float("nan"), Decimal("NaN"), bytearray(b"\xff"), {"n": {}},
                         [[]], datetime.now(UTC), object()]
    for value in odd:
        ex.route(Msg({"a": value, "b": value}))


# -- property: the indexed matcher equals a naive reading of RabbitMQ's algorithm ------

def naive_match(arguments: Mapping[str, object], headers: Mapping[str, object] | None) -> bool:
    mode = arguments.get("x-match", "all")
    with_x = mode in ("all-with-x", "any-with-x")
    wanted = {k: v for k, v in arguments.items()
              if k != "x-match" and (with_x or not k.startswith("x-"))}
    data = headers or {}

    def ok(key: str, value: object) -> bool:
        if key not in data:
            return False
        return value is None or match_key(value) == match_key(data[key])

    if mode in ("all", "all-with-x"):
        return all(ok(k, v) for k, v in wanted.items())
    return any(ok(k, v) for k, v in wanted.items())


names = st.sampled_from(["a", "b", "x-c"])
values = st.sampled_from([None, 1, 1.0, 2, True, False, "1", b"1", "a"])
argument_sets = st.builds(
    lambda table, mode: {**table, **({} if mode is None else {"x-match": mode})},
    st.dictionaries(names, values, max_size=3),
    st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]),
)
header_sets = st.one_of(st.none(), st.dictionaries(names, values, max_size=3))


@settings(max_examples=400, deadline=None)
@given(st.lists(argument_sets, min_size=1, max_size=8),
       st.lists(header_sets, min_size=1, max_size=6))
def test_index_agrees_with_naive_matcher(
    argument_list: list[dict[str, object]], header_list: list[dict[str, object] | None]
) -> None:
    ex: HeadersExchange[int] = HeadersExchange({})
    for index, arguments in enumerate(argument_list):
        ex.bind(index, "", arguments)
    for headers in header_list:
        expected = {i for i, a in enumerate(argument_list) if naive_match(a, headers)}
        got = list(ex.route(Msg(headers)))
        assert len(got) == len(set(got))
        assert set(got) == expected
