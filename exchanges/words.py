"""Topic words: how routing keys and topic patterns split, and one-pattern matching.

Splitting follows RabbitMQ (``rabbit_db_topic_exchange:split_topic_key``): words are
separated by ``.``, empty words are real words (``"a..b"`` is three words, ``".a"`` and
``"a."`` are two), and the empty string is *zero* words, not one empty word. So the
binding key ``""`` matches only the routing key ``""``, ``#`` matches it and ``*`` does not.

In a pattern, a word that is exactly ``*`` matches one word and a word that is exactly
``#`` matches zero or more words; any other word (including ``a*``) is literal.
"""

from __future__ import annotations

from collections.abc import Sequence

STAR = "*"
HASH = "#"


def split_words(key: str) -> tuple[str, ...]:
    """The words of a routing key or topic pattern."""
    return tuple(key.split(".")) if key else ()


def is_wildcard(pattern: Sequence[str]) -> bool:
    """True when a split pattern contains ``*`` or ``#``."""
    return STAR in pattern or HASH in pattern


def match_words(pattern: Sequence[str], words: Sequence[str]) -> bool:
    """Does one split pattern match one split key?

    The classic greedy wildcard algorithm with ``#`` as the "any run" and ``*``/literal as
    single-item matchers: on a mismatch it retries from the most recent ``#`` with one more
    word absorbed, so it takes O(len(pattern) * len(words)) at worst and never recurses.
    """
    p = w = 0
    n_pattern, n_words = len(pattern), len(words)
    back_p = -1  # position after the last '#' seen, to resume from on a mismatch
    back_w = 0  # words that '#' has absorbed so far end here
    while w < n_words:
        if p < n_pattern:
            word = pattern[p]
            if word == HASH:
                back_p, back_w = p + 1, w
                p += 1
                continue
            if word == STAR or word == words[w]:
                p += 1
                w += 1
                continue
        if back_p < 0:
            return False
        back_w += 1
        p, w = back_p, back_w
    while p < n_pattern and pattern[p] == HASH:
        p += 1
    return p == n_pattern
