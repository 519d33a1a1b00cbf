"""Lock-free counters, gauges and histograms for the per-request path, exposed by one registry collector.

Why not prometheus_client's own: each of its values takes a threading.Lock on every update, and the proxy
path made 13 such updates per request (4 histograms, 5 counters and gauges). Profiled (bench/, issue 6)
that was ~10% of the gateway's CPU per request; these plain-attribute updates cost a fraction of it. All
updates and every scrape run on the gateway's one event-loop thread, so nothing needs the lock.
The exposition is what prometheus_client would produce for the same metrics: names, types, help, labels,
`le` values (formatted by prometheus_client), `_total`, `_count`, `_sum` and `_created` samples.
Metrics off the per-request path stay prometheus_client's.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class HotCounter:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HotGauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class HotHistogram:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # le: the first bound >= value
        self.sum += value


class CounterFamily:
    """A labelled counter; children are created on first use and kept (label sets are small and fixed)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], HotCounter] = {}

    def labels(self, **labels: str) -> HotCounter:
        key = tuple(labels[name] for name in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = HotCounter()
        return child

    def collect(self, created: bool) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self.children.items():
            family.add_metric(key, child.value, created=child.created if created else None)
        return family


def _created() -> bool:
    # prometheus_client's switch (disable_created_metrics(), PROMETHEUS_DISABLE_CREATED_SERIES): no public
    # getter, and the exposition must follow it as its own metrics do.
    return bool(getattr(prometheus_metrics, "_use_created", True))


class HotMetrics(Collector):
    """Builds hot metrics; register it on a registry once they are built (describe() names them all)."""

    def __init__(self) -> None:
        self._families: list[CounterFamily] = []
        self._gauges: list[tuple[str, str, HotGauge]] = []
        self._histograms: list[tuple[str, str, HotHistogram, tuple[str, ...]]] = []

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> CounterFamily:
        family = CounterFamily(name, documentation, tuple(labelnames))
        self._families.append(family)
        return family

    def gauge(self, name: str, documentation: str) -> HotGauge:
        gauge = HotGauge()
        self._gauges.append((name, documentation, gauge))
        return gauge

    def histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> HotHistogram:
        bounds = tuple(float(b) for b in buckets)
        histogram = HotHistogram(bounds)
        self._histograms.append((name, documentation, histogram, (*map(floatToGoString, bounds), "+Inf")))
        return histogram

    def declared(self) -> dict[str, tuple[str, set[str]]]:
        """Exposed sample-family name -> (type, label names), whether or not a sample exists yet."""
        out: dict[str, tuple[str, set[str]]] = {}
        out.update({f"{f.name}_total": ("counter", set(f.labelnames)) for f in self._families})
        out.update({name: ("gauge", set()) for name, _, _ in self._gauges})
        out.update({name: ("histogram", set()) for name, _, _, _ in self._histograms})
        return out

    def describe(self) -> Iterator[Metric]:
        """Every family, without samples: the registry learns the names (and refuses duplicates)."""
        for labelled in self._families:
            yield CounterMetricFamily(labelled.name, labelled.documentation, labels=labelled.labelnames)
        for name, documentation, _ in self._gauges:
            yield GaugeMetricFamily(name, documentation)
        for name, documentation, _, _ in self._histograms:
            yield HistogramMetricFamily(name, documentation)

    def collect(self) -> Iterator[Metric]:
        created = _created()
        for labelled in self._families:
            yield labelled.collect(created)
        for name, documentation, gauge in self._gauges:
            yield GaugeMetricFamily(name, documentation, value=gauge.value)
        for name, documentation, histogram, les in self._histograms:
            cumulative, buckets = 0, []
            for le, count in zip(les, histogram.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            histogram_family = HistogramMetricFamily(
                name, documentation, buckets=buckets, sum_value=histogram.sum
            )
            if created:
                histogram_family.samples.append(Sample(f"{name}_created", {}, histogram.created))
            yield histogram_family
