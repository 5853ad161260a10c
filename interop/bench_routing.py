"""Routing micro-benchmark for the pure ``exchanges`` package (not a test).

Measures route() throughput of a topic exchange with 10, 10,000 and 100,000 bindings and
of an x-rules exchange with 1,000 rules. Prints one JSON line per case, then one line with
the ratio of 100,000- to 10-binding topic routing time (the goal is below 2: routing cost
should follow the key, not the number of bindings).

    .venv/bin/python interop/bench_routing.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exchanges.rules import RulesExchange
from exchanges.topic import TopicExchange

REGIONS = ["eu", "us", "apac", "latam", "mea", "cn", "in", "jp"]
EVENTS = ["created", "paid", "shipped", "refunded", "cancelled"]
LEVELS = ["debug", "info", "warn", "error"]


@dataclass(slots=True)
class Message:
    routing_key: str
    headers: Mapping[str, object] | None = None


def topic_patterns(count: int, rnd: random.Random) -> list[str]:
    """A realistic spread in every size (each block of 10 bindings has every kind): per-shard
    order patterns, service literals, log patterns with '#', and '#.<word>.#' catch-alls."""
    patterns: list[str] = []
    for i in range(count):
        kind = i % 10
        if kind < 4:
            patterns.append(f"orders.{rnd.choice(REGIONS)}.{i}.*")
        elif kind < 7:
            patterns.append(f"service{i}.events.{rnd.choice(EVENTS)}")
        elif kind < 8:
            patterns.append(f"logs.app{i}.#")
        elif kind < 9:
            patterns.append(f"*.app{i}.{rnd.choice(LEVELS)}")
        else:
            patterns.append(f"#.{REGIONS[i % len(REGIONS)]}{i // 10}.#")
    return patterns


def topic_keys(count: int, patterns: Sequence[str], rnd: random.Random) -> list[str]:
    """Keys made from bound patterns (wildcards filled in), half of them then spoilt in
    one word, so about half the messages have subscribers, as in a real system."""
    filler = [*REGIONS, *EVENTS, *LEVELS]
    keys: list[str] = []
    for _ in range(count):
        words: list[str] = []
        for word in rnd.choice(patterns).split("."):
            if word == "*":
                words.append(rnd.choice(filler))
            elif word == "#":
                words.extend(rnd.choice(filler) for _ in range(rnd.randrange(3)))
            else:
                words.append(word)
        if rnd.random() < 0.5:
            words[rnd.randrange(len(words))] = "zzz"
        keys.append(".".join(words))
    return keys


def rules_for(count: int) -> list[str]:
    """Selective rules of the kinds the README shows; a message matches a handful."""
    rules: list[str] = []
    for i in range(count):
        kind = i % 10
        if kind < 3:  # video: one transcode tier per 10-second duration band
            rules.append(f"routing_key == 'video.uploaded' and headers.duration > {i * 10} "
                         f"and headers.duration <= {i * 10 + 10}")
        elif kind < 6:  # per-tenant priority routing
            rules.append(f"headers.tenant == 't{i}' and headers.region == "
                         f"'{REGIONS[i % len(REGIONS)]}' and headers.priority >= 5")
        elif kind < 8:  # order e-mails per shop
            rules.append(f"routing_key ~ 'orders.*.paid' and headers.shop == 's{i}' "
                         "and headers.amount > 100")
        elif kind < 9:
            rules.append(f"headers.customer in ['c{i}', 'c{i + 1}', 'c{i + 2}']")
        else:  # unguarded: evaluated for every message
            rules.append(f"not exists headers.internal and routing_key ~ 'audit.{i}.#'")
    return rules


def rule_messages(count: int, rules: int, rnd: random.Random) -> list[Message]:
    messages: list[Message] = []
    for _ in range(count):
        i = rnd.randrange(rules)
        kind = rnd.randrange(4)
        if kind == 0:
            messages.append(Message("video.uploaded",
                                    {"duration": rnd.randrange(10 * rules), "codec": "h264"}))
        elif kind == 1:
            messages.append(Message("orders.42.paid", {
                "amount": rnd.randrange(300), "shop": f"s{i}", "customer": f"c{i}"}))
        elif kind == 2:
            messages.append(Message("tenant.event", {
                "region": rnd.choice(REGIONS), "priority": rnd.randrange(10),
                "tenant": f"t{i}"}))
        else:
            messages.append(Message(f"audit.{i}.login", {"user": "u"}))
    return messages


def measure(route: Any, messages: Sequence[Message], seconds: float) -> tuple[float, float]:
    """(routes per second, average destinations per route): the best of five rounds, so
    other work on the machine disturbs the figure as little as possible."""
    best = 0.0
    routed = matched = 0
    for _ in range(5):
        count = 0
        started = time.perf_counter()
        deadline = started + seconds / 5
        while time.perf_counter() < deadline:
            for message in messages:
                matched += len(route(message))
            count += len(messages)
        best = max(best, count / (time.perf_counter() - started))
        routed += count
    return best, matched / routed


def bench_topic(bindings: int, seconds: float) -> dict[str, object]:
    rnd = random.Random(bindings)
    exchange: TopicExchange[str] = TopicExchange({})
    started = time.perf_counter()
    patterns = topic_patterns(bindings, rnd)
    for i, pattern in enumerate(patterns):
        exchange.bind(f"q{i}", pattern, {})
    bind_seconds = time.perf_counter() - started
    messages = [Message(key) for key in topic_keys(2000, patterns, rnd)]
    rate, fanout = measure(exchange.route, messages, seconds)
    return {"case": "topic", "bindings": bindings, "routes_per_s": round(rate),
            "us_per_route": round(1e6 / rate, 2), "avg_destinations": round(fanout, 2),
            "bind_s": round(bind_seconds, 3)}


def bench_rules(count: int, seconds: float) -> dict[str, object]:
    rnd = random.Random(count)
    exchange: RulesExchange[str] = RulesExchange({})
    started = time.perf_counter()
    for i, rule in enumerate(rules_for(count)):
        exchange.bind(f"q{i}", "", {"x-rule": rule})
    bind_seconds = time.perf_counter() - started
    messages = rule_messages(2000, count, rnd)
    rate, fanout = measure(exchange.route, messages, seconds)
    return {"case": "x-rules", "bindings": count, "routes_per_s": round(rate),
            "us_per_route": round(1e6 / rate, 2), "avg_destinations": round(fanout, 2),
            "bind_s": round(bind_seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()
    results = {}
    for bindings in (10, 10_000, 100_000):
        result = bench_topic(bindings, args.seconds)
        results[bindings] = result
        print(json.dumps(result))
    print(json.dumps(bench_rules(1000, args.seconds)))
    small, large = results[10], results[100_000]
    ratio = float(str(small["routes_per_s"])) / float(str(large["routes_per_s"]))
    print(json.dumps({"case": "topic-scaling", "time_ratio_100000_vs_10": round(ratio, 2),
                      "goal": "< 2"}))


if __name__ == "__main__":
    main()
