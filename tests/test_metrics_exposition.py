"""The per-object fast path (amqpd.metrics.exposition) writes byte for byte what
prometheus_client's ``generate_latest`` writes for the same families: any label values
(quotes, backslashes, newlines, unicode), any values (NaN, infinities, -0.0, huge integers),
counters with and without ``_total``, and mixed with the families the library still renders
(histograms, counters with ``_created``)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from amqpd.admin.readmodel import LiveState
from amqpd.broker.broker import Broker
from amqpd.broker.message import Message, route_for
from amqpd.config.settings import Settings
from amqpd.metrics.commits import CommitStats
from amqpd.metrics.exposition import ColumnFamily, Families, SeriesLabels, render_families
from amqpd.metrics.families import (
    AGGREGATED,
    DETAILED,
    DETAILED_FAMILIES,
    PER_OBJECT,
    BrokerCollector,
    Scrape,
)

EMPTY_HEADER = bytes.fromhex("003c000000000000000000000000")  # class 60, size 0, no flags
LIBRARY_KINDS = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
                 "unknown": UnknownMetricFamily}

# Text that exercises every escape: the three escaped characters are drawn often. No lone
# surrogates: neither renderer can encode them (see test_a_lone_surrogate_fails_...); names
# that come off the wire are valid UTF-8.
characters = st.characters(exclude_categories=["Cs"])
label_text = st.text(st.one_of(st.sampled_from('"\\\n{},= '), characters), max_size=12)
values = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.integers(min_value=-5, max_value=5),  # the cached small integers
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e16, 1234567.0, 123456.7, 1e-7, 5e-324]),
)
label_names = st.lists(st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,6}", fullmatch=True),
                       max_size=4, unique=True)
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,10}(_total)?", fullmatch=True).filter(
    lambda name: name != "_total")


@st.composite
def families(draw: st.DrawFn) -> tuple[ColumnFamily, Metric]:
    """A fast-path family and the same family built with prometheus_client's add_metric."""
    kind = draw(st.sampled_from(sorted(LIBRARY_KINDS)))
    name, documentation = draw(metric_names), draw(label_text)
    names = draw(label_names)
    rows = draw(st.lists(st.tuples(*[label_text] * len(names)), max_size=8))
    numbers = draw(st.lists(values, min_size=len(rows), max_size=len(rows)))
    library = LIBRARY_KINDS[kind](name, documentation, labels=names)
    for row, number in zip(rows, numbers, strict=True):
        library.add_metric(row, number)
    return ColumnFamily(kind, name, documentation, SeriesLabels(names, rows), numbers), library


def library_render(metrics: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(metrics))
    return generate_latest(registry)


@settings(max_examples=300, deadline=None)
@given(families())
def test_a_column_family_renders_as_generate_latest(pair: tuple[ColumnFamily, Metric]) -> None:
    fast, library = pair
    expected = library_render([library])
    assert render_families([fast]) == expected
    # The samples it hands the library are the library's own: a registry that knows nothing
    # of the fast path writes the same.
    assert library_render([fast]) == expected


def test_cached_integer_text_is_not_used_for_negative_zero() -> None:
    # -0.0 == 0 (and hashes alike), but the library writes "-0.0".
    labels = SeriesLabels(["a"], [("x",), ("y",), ("z",)])
    text = render_families([ColumnFamily("gauge", "g", "", labels, [0, -0.0, 0.0])])
    assert text.splitlines()[2:] == [b'g{a="x"} 0.0', b'g{a="y"} -0.0', b'g{a="z"} 0.0']


def histogram(name: str) -> Metric:
    family = HistogramMetricFamily(name, "A histogram, as amqpd's two", labels=["protocol"])
    family.add_metric(["amqp091"], [("64.0", 1), ("256.0", 3), ("+Inf", 4)], 512.0)
    return family


def counter_with_created(name: str) -> Metric:
    family = CounterMetricFamily(name, "A counter with a created time", labels=["q"])
    family.add_metric(['a"b'], 7, created=1700000000.5)
    return family


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(families(), st.sampled_from(["histogram", "created"])), max_size=6))
def test_mixed_families_render_as_generate_latest(
        drawn: list[tuple[ColumnFamily, Metric] | str]) -> None:
    fast: list[Metric] = []
    library: list[Metric] = []
    for index, item in enumerate(drawn):
        if isinstance(item, str):  # rendered by prometheus_client on both sides
            family = (histogram if item == "histogram" else counter_with_created)(f"m{index}")
            fast.append(family)
            library.append(family)
        else:
            fast.append(item[0])
            library.append(item[1])
    assert render_families(fast) == library_render(library)


def test_an_integer_too_large_for_a_float_fails_as_in_the_library() -> None:
    fast = ColumnFamily("gauge", "g", "", SeriesLabels([], [()]), [10**400])
    with pytest.raises(OverflowError):
        render_families([fast])
    with pytest.raises(OverflowError):
        library_render([GaugeMetricFamily("g", "", value=10**400)])


def test_a_lone_surrogate_fails_as_in_the_library() -> None:
    fast = ColumnFamily("gauge", "g", "", SeriesLabels(["a"], [("\ud800",)]), [1])
    with pytest.raises(UnicodeEncodeError):
        render_families([fast])
    with pytest.raises(UnicodeEncodeError):
        library_render([fast])


def test_names_that_would_need_escaping_are_refused() -> None:
    with pytest.raises(ValueError, match="label name"):
        SeriesLabels(["queue-name"], [])
    with pytest.raises(ValueError, match="label name"):
        SeriesLabels(["__reserved"], [])
    with pytest.raises(ValueError, match="duplicate"):
        SeriesLabels(["a", "a"], [])
    with pytest.raises(ValueError, match="metric name"):
        ColumnFamily("gauge", "queue.depth", "", SeriesLabels([], []), [])
    with pytest.raises(ValueError, match="fast path"):
        ColumnFamily("histogram", "h", "", SeriesLabels([], []), [])
    with pytest.raises(ValueError, match="values for"):
        ColumnFamily("gauge", "g", "", SeriesLabels(["a"], [("x",)]), [1, 2])


def busy_broker(names: list[str]) -> LiveState:
    broker = Broker(Settings(disk_free_limit=0))
    vhost = broker.vhosts["/"]
    vhost.declare_exchange("dlx", "fanout")
    for index, name in enumerate(names):
        arguments = {"x-dead-letter-exchange": "dlx", "x-max-length": 1} if index % 2 else {}
        queue = vhost.declare_queue(name, None, arguments=arguments)
        if not index % 2:
            vhost.bind("dlx", queue, "", None)
        for _ in range(index % 3):
            queue.push(Message(route_for("", queue.name), EMPTY_HEADER, b"x" * index))
    return LiveState(broker, list)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(st.one_of(st.sampled_from('"\\\n'), characters), min_size=1,
                        max_size=10).filter(lambda name: not name.startswith("amq.")),
                unique=True, max_size=8))
def test_every_endpoint_renders_as_generate_latest(names: list[str]) -> None:
    """The whole scrape: the fast path against generate_latest over the very same families
    (the ColumnFamily ones through their samples), on every endpoint."""
    state = busy_broker(names)
    commits = CommitStats()
    commits.observe(0.002, 1)
    for endpoint, chosen in ((AGGREGATED, None), (PER_OBJECT, None),
                             (DETAILED, DETAILED_FAMILIES)):
        metrics = list(BrokerCollector(Scrape(state, commits, 0), endpoint, chosen).collect())
        assert any(isinstance(m, ColumnFamily) for m in metrics) == (endpoint != AGGREGATED)
        assert render_families(metrics) == library_render(metrics)


def test_per_queue_values_are_in_their_queues_series() -> None:
    # Pushes 0, 1, 2, 0, 1, 2; "f" (max-length 1) dead-letters one message to the queues
    # bound to dlx: "a", "c", "e".
    state = busy_broker(["a", "b", "c", "d", "e", "f"])
    metrics = {m.name: m for m in BrokerCollector(Scrape(state, None, 0), PER_OBJECT).collect()}
    ready = metrics["rabbitmq_queue_messages_ready"]
    assert {s.labels["queue"]: s.value for s in ready.samples} == {
        "a": 1, "b": 1, "c": 3, "d": 0, "e": 2, "f": 1}
    dead = metrics["amqpd_queue_messages_dead_lettered"]
    assert [(s.name, s.labels, s.value) for s in dead.samples] == [
        ("amqpd_queue_messages_dead_lettered_total",
         {"vhost": "/", "queue": "f", "reason": "maxlen"}, 1)]
