"""topic exchange: RabbitMQ word semantics, the trie, and a reference-matcher property."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanges import get_exchange_type
from exchanges.topic import TopicExchange
from exchanges.words import match_words, split_words


@dataclass
class Msg:
    routing_key: str
    headers: Mapping[str, object] | None = None


def make(*patterns: str) -> TopicExchange[str]:
    ex: TopicExchange[str] = TopicExchange({})
    for pattern in patterns:
        ex.bind(pattern, pattern, {})  # destination named after its pattern
    return ex


def routed(ex: TopicExchange[str], key: str) -> list[str]:
    return sorted(ex.route(Msg(key)))


def matches(pattern: str, key: str) -> bool:
    return routed(make(pattern), key) == [pattern]


def ref_words(text: str) -> list[str]:
    """RabbitMQ's split_topic_key: the empty key has no words."""
    return [] if text == "" else text.split(".")


def ref_match(pattern: list[str], words: list[str]) -> bool:
    """The obviously-correct recursive matcher the trie must agree with."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return ref_match(rest, words) or (bool(words) and ref_match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and ref_match(rest, words[1:])


def test_registered() -> None:
    assert get_exchange_type("topic") is TopicExchange


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("a.b", "a.b", True),
    ("a.b", "a.b.c", False),
    ("a.b", "a", False),
    # '*' is exactly one word
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*", "a", True),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    # '#' is zero or more words
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b.a", False),
    ("#.a", "a", True),
    ("#.a", "x.y.a", True),
    ("#.a", "a.x", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("#.eu.#", "orders.eu.1", True),
    ("#.eu.#", "eu", True),
    ("#.eu.#", "orders.us.1", False),
])
def test_basic_wildcards(pattern: str, key: str, expected: bool) -> None:
    assert matches(pattern, key) is expected


@pytest.mark.parametrize("key", ["", ".", "a", "a.b.c", "..", "#", "*"])
def test_hash_alone_matches_everything(key: str) -> None:
    assert matches("#", key)


def test_empty_routing_key_has_zero_words() -> None:
    # RabbitMQ splits "" into no words at all (not one empty word).
    assert split_words("") == ()
    assert matches("", "")
    assert matches("#", "")
    assert matches("#.#", "")
    assert not matches("*", "")
    assert not matches("", ".")
    assert not matches("", "a")
    assert not matches("a", "")


def test_empty_words_are_real_words() -> None:
    assert split_words("a..b") == ("a", "", "b")
    assert split_words(".a") == ("", "a")
    assert split_words("a.") == ("a", "")
    assert split_words(".") == ("", "")
    assert matches("a.*.b", "a..b")
    assert not matches("a.b", "a..b")
    assert matches("*.a", ".a")
    assert matches("a.*", "a.")
    assert matches("*.*", ".")
    assert not matches("*", ".")
    assert matches("a..b", "a..b")
    assert matches("a.#", "a.")
    assert matches(".", ".")
    assert not matches(".", "")


def test_double_hash_and_star_hash_star() -> None:
    assert matches("#.#", "a")
    assert matches("#.#", "a.b.c")
    assert not matches("*.#.*", "a")
    assert matches("*.#.*", "a.b")
    assert matches("*.#.*", "a.b.c.d")
    assert matches("#.*", "a")
    assert not matches("#.*", "")
    assert matches("*.#", "a")
    assert matches("#.*.#", "a.b")


def test_wildcard_characters_inside_words_are_literal() -> None:
    assert matches("a*", "a*")
    assert not matches("a*", "ab")
    assert matches("a#", "a#")
    assert not matches("a#.b", "a.x.b")


def test_wildcard_characters_in_routing_keys_are_not_special() -> None:
    assert not matches("a.b", "a.*")
    assert not matches("a.b", "a.#")
    assert matches("a.*", "a.#")
    assert matches("a.*", "a.*")


def test_each_destination_once_even_if_several_patterns_match() -> None:
    ex: TopicExchange[str] = TopicExchange({})
    for pattern in ("a.b", "a.*", "#", "a.#", "#.b"):
        ex.bind("q", pattern, {})
    assert list(ex.route(Msg("a.b"))) == ["q"]


def test_exact_and_wildcard_bindings_combine() -> None:
    ex = make("a.b", "a.*", "x.y")
    assert routed(ex, "a.b") == ["a.*", "a.b"]
    assert routed(ex, "x.y") == ["x.y"]
    assert routed(ex, "x.z") == []


def shortcut(ex: TopicExchange[str]) -> bool:
    return ex._fanout is not None


def test_fanout_shortcut_when_only_hash() -> None:
    ex: TopicExchange[str] = TopicExchange({})
    ex.bind("q1", "#", {})
    ex.bind("q2", "#", {})
    assert shortcut(ex)
    assert sorted(ex.route(Msg("any.thing"))) == ["q1", "q2"]
    ex.bind("q3", "a", {})
    assert not shortcut(ex)
    assert sorted(ex.route(Msg("a"))) == ["q1", "q2", "q3"]
    assert sorted(ex.route(Msg("b"))) == ["q1", "q2"]
    ex.bind("q4", "a.#", {})
    ex.unbind("q3", "a", {})
    assert not shortcut(ex)
    ex.unbind("q4", "a.#", {})
    assert shortcut(ex)
    assert sorted(ex.route(Msg(""))) == ["q1", "q2"]


def test_unbinding_prunes_the_trie() -> None:
    patterns = ["a.*.c", "a.#", "#.b.#", "*.*", "#", "a.#.#.b", "x.*.#"]
    ex = make(*patterns)
    ex.bind("other", "a.*.c", {})
    for pattern in patterns:
        assert ex.unbind(pattern, pattern, {})
    assert routed(ex, "a.b.c") == ["other"]
    assert ex.unbind("other", "a.*.c", {})
    assert ex._trie.root.is_empty()
    assert ex._trie.size == 0
    assert len(ex) == 0


def test_same_pattern_different_arguments_is_two_bindings() -> None:
    ex: TopicExchange[str] = TopicExchange({})
    assert ex.bind("q", "a.*", {})
    assert ex.bind("q", "a.*", {"x": 1})
    assert ex.unbind("q", "a.*", {})
    assert list(ex.route(Msg("a.b"))) == ["q"]
    assert ex.unbind("q", "a.*", {"x": 1})
    assert list(ex.route(Msg("a.b"))) == []


def test_unbind_destination() -> None:
    ex: TopicExchange[str] = TopicExchange({})
    for pattern in ("a.*", "#", "a.b"):
        ex.bind("q1", pattern, {})
    ex.bind("q2", "a.b", {})
    assert ex.unbind_destination("q1") == 3
    assert list(ex.route(Msg("a.b"))) == ["q2"]
    assert list(ex.route(Msg("z"))) == []


def test_pathological_patterns_on_a_255_byte_key_stay_fast() -> None:
    ex: TopicExchange[str] = TopicExchange({})
    hashes = ".".join(["#"] * 20)
    ex.bind("q1", f"{hashes}.a", {})
    ex.bind("q2", ".".join(["#", "*"] * 10) + ".a", {})
    ex.bind("q3", ".".join(["#"] * 30), {})
    key = ".".join(["b"] * 127)  # 253 bytes, 127 words, never ends in 'a'
    assert len(key.encode()) <= 255
    started = time.perf_counter()
    assert list(ex.route(Msg(key))) == ["q3"]
    assert list(ex.route(Msg(key + ".a"))) != []
    assert time.perf_counter() - started < 2.0


def test_many_bindings_bind_route_and_unbind_quickly() -> None:
    started = time.perf_counter()
    ex: TopicExchange[str] = TopicExchange({})
    for i in range(20_000):
        ex.bind(f"all{i}", "#", {})  # the fanout shortcut must not cost O(n) per bind
        ex.bind(f"q{i}", f"orders.{i}.*", {})
    assert len(ex.route(Msg("orders.7.paid"))) == 20_001
    assert sum(ex.unbind_destination(f"q{i}") for i in range(20_000)) == 20_000
    assert shortcut(ex)
    assert len(ex.route(Msg("x"))) == 20_000
    assert time.perf_counter() - started < 10


def test_match_words_pathological_single_pattern_is_fast() -> None:
    started = time.perf_counter()
    pattern = split_words(".".join(["#"] * 40) + ".a")
    assert not match_words(pattern, split_words(".".join(["b"] * 127)))
    assert time.perf_counter() - started < 1.0


# -- properties ------------------------------------------------------------------------

words = st.sampled_from(["a", "b", ""])
pattern_words = st.sampled_from(["a", "b", "", "*", "#", "#"])
keys = st.lists(words, max_size=5).map(".".join)
patterns = st.lists(pattern_words, max_size=5).map(".".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=12), st.lists(keys, min_size=1, max_size=8))
def test_trie_agrees_with_reference_matcher(pattern_list: list[str], key_list: list[str]) -> None:
    ex: TopicExchange[int] = TopicExchange({})
    for index, pattern in enumerate(pattern_list):
        ex.bind(index, pattern, {})
    for key in key_list:
        expected = {i for i, p in enumerate(pattern_list)
                    if ref_match(ref_words(p), ref_words(key))}
        got = list(ex.route(Msg(key)))
        assert len(got) == len(set(got))
        assert set(got) == expected, (key, pattern_list)


@settings(max_examples=200, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=10), st.data())
def test_trie_agrees_after_unbinding(pattern_list: list[str], data: st.DataObject) -> None:
    ex: TopicExchange[int] = TopicExchange({})
    for index, pattern in enumerate(pattern_list):
        ex.bind(index, pattern, {})
    removed = data.draw(st.sets(st.integers(0, len(pattern_list) - 1)))
    for index in removed:
        assert ex.unbind(index, pattern_list[index], {})
    for key in data.draw(st.lists(keys, min_size=1, max_size=6)):
        expected = {i for i, p in enumerate(pattern_list)
                    if i not in removed and ref_match(ref_words(p), ref_words(key))}
        assert set(ex.route(Msg(key))) == expected
    if len(removed) == len(pattern_list):
        assert ex._trie.root.is_empty()


@settings(max_examples=500, deadline=None)
@given(patterns, keys)
def test_single_pattern_matcher_agrees_with_reference(pattern: str, key: str) -> None:
    expected = ref_match(ref_words(pattern), ref_words(key))
    assert match_words(split_words(pattern), split_words(key)) is expected
