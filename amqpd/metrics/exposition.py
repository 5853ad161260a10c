"""A measured fast path for the per-object families: built column-wise, rendered without
prometheus_client's per-sample work, byte for byte what ``generate_latest`` writes.

With 10,000 queues ``/metrics/per-object`` has about 150,000 series. Built as
``GaugeMetricFamily.add_metric`` calls (a ``Sample`` and a label dict each) and rendered by
``generate_latest`` (label names validated, sorted, escaped and formatted per sample) that costs
about 1 s -- the 200 ms a scrape may take is spent ten times over. Here a series' labels are
escaped and joined once per object (:class:`SeriesLabels`) and shared by every family of that
object, a family holds only its values (:class:`ColumnFamily`), and :func:`render` writes each
line with one f-string. Everything else (single-series families, histograms) is still
rendered by ``generate_latest``; ``tests/test_metrics_exposition.py`` checks with hypothesis
that both renderers write the same bytes for any label values and values.

A :class:`ColumnFamily` is a real ``prometheus_client`` ``Metric`` (its ``samples`` are made
on demand), so a registry that knows nothing of the fast path renders it correctly, only
slower.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# The library's number formatting (untyped there), so values are written as generate_latest does.
_go_float = cast(Callable[[float], str], floatToGoString)

# prometheus_client's legacy name rules: a name matching them is written as it is, so the fast
# path (which writes names unescaped) accepts no other.
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABEL_NAME = re.compile(r"^__")
_KINDS = frozenset({"counter", "gauge", "unknown"})
# Small integers (queue depths, consumer counts, zeros) repeat across series and families:
# their text is looked up, not formatted again. Bounded, as a broker's values are not.
_INT_TEXT_CACHE_SIZE = 4096
_int_text: dict[int, str] = {}


def _escape_label_value(value: str) -> str:
    # generate_latest's escaping of label values (openmetrics._escape with ALLOWUTF8).
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _check_label_names(names: Sequence[str]) -> None:
    for name in names:
        if not _LABEL_NAME.match(name) or _RESERVED_LABEL_NAME.match(name):
            raise ValueError(f"label name {name!r} needs escaping: not on the fast path")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate label names {names!r}")


class SeriesLabels:
    """The label values of one series per object (a queue, a channel), and their text
    (``queue="q",vhost="/"``: names sorted, values escaped) made once and shared by every
    family of those objects."""

    __slots__ = ("_texts", "names", "values")

    def __init__(self, names: Sequence[str], values: list[tuple[str, ...]]):
        _check_label_names(names)
        self.names = tuple(names)
        self.values = values
        self._texts: list[str] | None = None

    @property
    def texts(self) -> list[str]:
        """Made when first rendered -- in the worker thread, not on the event loop (the
        values are strings, which nothing changes)."""
        if self._texts is None:
            self._texts = self._render()
        return self._texts

    def _render(self) -> list[str]:
        names, values = self.names, self.values
        order = sorted(range(len(names)), key=lambda index: names[index])
        escape = _escape_label_value
        if len(order) == 2:  # (vhost, queue): the families that have 10,000s of series
            first, second = order
            first_key, second_key = f'{names[first]}="', f'",{names[second]}="'
            return [f'{first_key}{escape(row[first])}{second_key}{escape(row[second])}"'
                    for row in values]
        keys = [(index, f'{names[index]}="') for index in order]
        return [",".join([f'{key}{escape(row[index])}"' for index, key in keys])
                for row in values]

    def __len__(self) -> int:
        return len(self.values)


class ColumnFamily(Metric):
    """A gauge, counter or untyped family with one series per object of a
    :class:`SeriesLabels`, its values in the same order."""

    def __init__(self, kind: str, name: str, documentation: str, labels: SeriesLabels,
                 values: Iterable[float]):
        if kind not in _KINDS:
            raise ValueError(f"{kind!r} families are not on the fast path")
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]  # as CounterMetricFamily: the family has no _total, its sample has
        self.sample_name = name + "_total" if kind == "counter" else name
        if not _METRIC_NAME.match(self.sample_name):
            raise ValueError(f"metric name {name!r} needs escaping: not on the fast path")
        self.labels = labels
        self.values = list(values)
        if len(self.values) != len(labels):
            raise ValueError(f"{len(self.values)} values for {len(labels)} series")
        super().__init__(name, documentation, kind)

    # Metric.__init__ assigns an empty list; the samples are the columns'.
    @property
    def samples(self) -> list[Sample]:
        names = self.labels.names
        return [Sample(self.sample_name, dict(zip(names, row, strict=True)), value)
                for row, value in zip(self.labels.values, self.values, strict=True)]

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        if samples:
            raise TypeError("a ColumnFamily's samples are its columns")

    def render(self) -> str:
        """The family in the text format (0.0.4), as ``generate_latest`` writes it."""
        exposed = self.sample_name if self.type == "counter" else self.name
        kind = "untyped" if self.type == "unknown" else self.type
        help_text = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        head = f"# HELP {exposed} {help_text}\n# TYPE {exposed} {kind}\n"
        values = [_format(value) for value in self.values]
        if not self.labels.names:
            return head + "".join([f"{self.sample_name} {value}\n" for value in values])
        start = self.sample_name + "{"
        return head + "".join([f"{start}{labels}}} {value}\n"
                               for labels, value in zip(self.labels.texts, values, strict=True)])


def _format(value: float) -> str:
    # Only ints are cached: -0.0 == 0 but is written "-0.0".
    if type(value) is int:
        text = _int_text.get(value)
        if text is None:
            text = _go_float(value)
            if len(_int_text) < _INT_TEXT_CACHE_SIZE:
                _int_text[value] = text
        return text
    return _go_float(value)


class Families:
    """Families already read, as a collector (for ``generate_latest``)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def render_families(families: Iterable[Metric]) -> bytes:
    """The text exposition format of these families: :class:`ColumnFamily` ones by the fast
    path, runs of the others by ``generate_latest`` (which writes each family on its own, so
    the pieces join into what it would write for all of them)."""
    parts: list[str | bytes] = []
    pending: list[Metric] = []
    for family in families:
        if isinstance(family, ColumnFamily):
            if pending:
                parts.append(_library_render(pending))
                pending = []
            parts.append(family.render())
        else:
            pending.append(family)
    if pending:
        parts.append(_library_render(pending))
    return b"".join(part if isinstance(part, bytes) else part.encode("utf-8") for part in parts)


def _library_render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    return generate_latest(registry)


def render(collector: Collector) -> bytes:
    """The text exposition format of one collector."""
    return render_families(collector.collect())
