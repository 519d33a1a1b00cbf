"""The lock-free metrics expose exactly what prometheus_client's own would for the same updates."""

from __future__ import annotations

import re
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.ops.hotmetrics import HotMetrics

BUCKETS = (0.005, 0.1, 1, 5, 300)
VALUES = (0.0, 0.005, 0.0051, 0.1, 0.5, 1.0, 4.99, 5.0, 299.0, 301.0, 1e9)


def _without_created(text: bytes) -> str:
    # _created holds the creation time, which differs between two registries by construction.
    return re.sub(r"^\w+_created(\{[^}]*\})? \S+\n", "", text.decode(), flags=re.MULTILINE)


def test_exposition_matches_prometheus_client_for_the_same_updates(created_series_enabled: None) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    hot = HotMetrics()
    counter = (
        Counter("x_requests", "Requests.", registry=theirs),
        hot.counter("x_requests", "Requests.").labels(),
    )
    family = (
        Counter("x_by", "By method.", ["method", "code"], registry=theirs),
        hot.counter("x_by", "By method.", ["method", "code"]),
    )
    gauge = (Gauge("x_in_flight", "In flight.", registry=theirs), hot.gauge("x_in_flight", "In flight."))
    histogram = (
        Histogram("x_seconds", "Durations.", buckets=BUCKETS, registry=theirs),
        hot.histogram("x_seconds", "Durations.", BUCKETS),
    )
    for c in counter:
        c.inc()
        c.inc(2.5)
    for f in family:
        f.labels(method="GET", code="200").inc()
        f.labels(method="GET", code="200").inc()
        f.labels(method="POST", code="502").inc()
    for g in gauge:
        g.inc()
        g.inc()
        g.dec()
        g.set(7)
        g.dec(2)
    for h in histogram:
        for value in VALUES:
            h.observe(value)
    ours.register(hot)

    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))
    assert ours.get_sample_value("x_seconds_bucket", {"le": "5.0"}) == 8.0  # le is inclusive
    assert ours.get_sample_value("x_seconds_created") is not None
    assert ours.get_sample_value("x_by_created", {"method": "GET", "code": "200"}) is not None


def test_declared_names_types_and_labels_before_any_sample() -> None:
    hot = HotMetrics()
    hot.counter("a", "A.")
    hot.counter("b", "B.", ["replica"])
    hot.gauge("c", "C.")
    hot.histogram("d_seconds", "D.", BUCKETS)

    assert hot.declared() == {
        "a_total": ("counter", set()),
        "b_total": ("counter", {"replica"}),
        "c": ("gauge", set()),
        "d_seconds": ("histogram", set()),
    }


# --- prometheus_client's switches and registry checks ----------------------------------------


def _created_series(enabled: bool) -> Iterator[None]:
    """The process-wide switch set for one test, then put back (gateway.ops.metrics turns it off at import)."""
    was = prometheus_client.metrics._use_created
    if enabled:
        prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]
    else:
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        prometheus_client.metrics._use_created = was


@pytest.fixture
def created_series_disabled() -> Iterator[None]:
    yield from _created_series(False)


@pytest.fixture
def created_series_enabled() -> Iterator[None]:
    yield from _created_series(True)


def test_the_gateway_turns_created_series_off() -> None:
    import gateway.ops.metrics  # noqa: F401  (the import is the switch)

    assert prometheus_client.metrics._use_created is False


def test_hot_metrics_honour_disabled_created_series(created_series_disabled: None) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    hot = HotMetrics()
    Counter("x_requests", "Requests.", registry=theirs).inc()
    hot.counter("x_requests", "Requests.").labels().inc()
    Histogram("x_seconds", "Durations.", buckets=(1.0,), registry=theirs).observe(0.5)
    hot.histogram("x_seconds", "Durations.", (1.0,)).observe(0.5)
    ours.register(hot)

    assert b"_created" not in generate_latest(theirs)
    assert generate_latest(ours) == generate_latest(theirs)


def test_registry_refuses_a_second_metric_with_a_hot_metrics_name() -> None:
    registry = CollectorRegistry()
    hot = HotMetrics()
    hot.counter("x_requests", "Requests.").labels()
    registry.register(hot)
    with pytest.raises(ValueError, match="Duplicated"):  # what prometheus_client does for its own Counter
        Counter("x_requests", "Again.", registry=registry)


def test_control_registry_refuses_a_duplicate_prometheus_client_name() -> None:
    registry = CollectorRegistry()
    Counter("x_requests", "Requests.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("x_requests", "Again.", registry=registry)
