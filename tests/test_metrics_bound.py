"""Pre-bound recording of ``http.server.request.duration`` (divak.metrics.bound).

The same requests go to an application's own provider, whose attribute
sets are recorded straight into the SDK's aggregations, and to a provider
divak did not make, whose measurements go through ``Histogram.record``:
the readers of both must see the same points.
"""

from __future__ import annotations

import logging
import math
import random
import typing

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from tornado import httputil

from divak import metrics
from divak.metrics import series as metric_series
from divak.metrics.bound import BoundHistogram
from divak.metrics.instruments import ApplicationMetrics
from tests.conftest import listen, run
from tests.services.metrics_service import Application
from tests.test_metrics import DURATION, fetch, samples, scrape

SAMPLED_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
UNSAMPLED_TRACE = 0x11111111111111111111111111111111


def span_context(trace_id: int, sampled: bool) -> otel_context.Context:
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=trace.TraceFlags(int(sampled)),
        )
    )
    return trace.set_span_in_context(span)


def new_request(method: str, version: str) -> httputil.HTTPServerRequest:
    return httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine(method, "/x", version),
        headers=httputil.HTTPHeaders({"Host": "127.0.0.1"}),
    )


Inputs = tuple[str, str | None, int | None, str | None, str, float, int]


def mixed_inputs(count: int) -> list[Inputs]:
    """Requests of many attribute sets: unknown methods, long routes,
    errors, no status, bucket boundaries, three kinds of context."""
    rng = random.Random(23)
    return [
        (
            rng.choice(["GET", "GET", "POST", "DELETE", "BREW", "X" * 40]),
            rng.choice(["/items/{item_id}", "/a", None, "r" * 300]),
            rng.choice([200, 200, 404, 500, None]),
            rng.choice([None, None, "ValueError", "client_disconnected"]),
            rng.choice(["HTTP/1.1", "HTTP/1.0"]),
            rng.choice([0.0, 0.0042, 0.005, 0.3, 2.5, 12.0, rng.random()]),
            rng.choice([0, 1, 2]),
        )
        for _ in range(count)
    ]


CONTEXTS = [
    None,
    span_context(SAMPLED_TRACE, True),
    span_context(UNSAMPLED_TRACE, False),
]


def finish_all(app_metrics: ApplicationMetrics, inputs: list[Inputs]) -> None:
    for method, route, status, error, version, seconds, context in inputs:
        request = new_request(method, version)
        app_metrics.request_started(request)
        app_metrics.request_finished(
            request, route, status, error, CONTEXTS[context], seconds
        )


def operations_and_clients(
    app_metrics: ApplicationMetrics, inputs: list[Inputs]
) -> None:
    """The inputs as operations and outgoing requests too."""
    for method, route, status, error, version, seconds, context in inputs:
        app_metrics.record_operation(route or "none", seconds, CONTEXTS[context])
        app_metrics.client_request_finished(
            method,
            route or "inventory",
            8080,
            status,
            seconds,
            error,
            CONTEXTS[context],
            version[5:],
        )


def histograms(
    reader: InMemoryMetricReader,
) -> dict[str, dict[frozenset, dict[str, typing.Any]]]:
    """The points of every histogram of *reader*, by name and attribute
    set, exemplars by their value and span (their time is the
    recording's).  A collection takes the exemplars it hands out."""
    data = reader.get_metrics_data()
    found: dict[str, dict[frozenset, dict[str, typing.Any]]] = {}
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name not in HISTOGRAMS:
                    continue
                found[metric.name] = {
                    frozenset(point.attributes.items()): {
                        "count": point.count,
                        "sum": point.sum,
                        "bucket_counts": list(point.bucket_counts),
                        "explicit_bounds": list(point.explicit_bounds),
                        "min": point.min,
                        "max": point.max,
                        "exemplars": sorted(
                            (e.value, e.trace_id or 0, e.span_id or 0)
                            for e in point.exemplars
                        ),
                    }
                    for point in metric.data.data_points
                }
    return found


HISTOGRAMS = (
    metrics.SERVER_DURATION,
    metrics.CLIENT_DURATION,
    metrics.OPERATION_DURATION,
)


def points(reader: InMemoryMetricReader) -> dict[frozenset, dict[str, typing.Any]]:
    """The ``http.server.request.duration`` points of *reader*."""
    return histograms(reader).get(metrics.SERVER_DURATION, {})


def adopted(reader: InMemoryMetricReader, **kwargs: typing.Any) -> ApplicationMetrics:
    """Metrics whose instruments come from a provider divak did not make
    (as an adopted global provider's): every measurement goes through
    ``Histogram.record``."""
    return ApplicationMetrics(
        provider=MeterProvider(metric_readers=[reader], **kwargs),
        runtime=False,
        cardinality_limit=12,
    )


def close(app_metrics: ApplicationMetrics) -> None:
    """Shut down *app_metrics* and the provider it did not make."""
    provider = app_metrics.provider
    app_metrics.shutdown()
    assert provider is not None
    provider.shutdown()


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
def test_prebound_points_equal_the_sdk_points(
    exemplar_filter: str,
    monkeypatch: pytest.MonkeyPatch,
    log_records: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", exemplar_filter)
    second = InMemoryMetricReader()
    own = ApplicationMetrics(runtime=False, cardinality_limit=12, readers=[second])
    sdk_reader = InMemoryMetricReader()
    sdk = adopted(sdk_reader)
    try:
        assert own.owns_provider and own.reader is not None
        inputs = mixed_inputs(600)
        for app_metrics in (own, sdk):
            finish_all(app_metrics, inputs)
            operations_and_clients(app_metrics, inputs)

        everything = histograms(sdk_reader)
        assert set(everything) == set(HISTOGRAMS)
        assert histograms(own.reader) == everything
        assert histograms(second) == everything  # every reader's aggregation
        assert all(len(sets) > 3 for sets in everything.values())
        expected = everything[metrics.SERVER_DURATION]
        # A mix of sets, the overflow set among them; every request counted.
        assert len(expected) == 13
        overflow = frozenset(metric_series.OVERFLOW_ATTRIBUTES.items())
        assert expected[overflow]["count"] > 0
        assert sum(p["count"] for p in expected.values()) == len(inputs)
        trace_ids = {e[1] for p in expected.values() for e in p["exemplars"]}
        if exemplar_filter == "trace_based":
            assert trace_ids == {SAMPLED_TRACE}
        elif exemplar_filter == "always_on":
            assert {SAMPLED_TRACE, UNSAMPLED_TRACE} <= trace_ids
        else:
            assert trace_ids == set()
        # The application's own provider took the pre-bound path, the
        # other one said once why it did not.
        told = [
            r.getMessage()
            for r in log_records
            if r.name == "divak.metrics" and "Histogram.record" in r.getMessage()
        ]
        assert sorted(told) == [
            f"{name} is recorded through Histogram.record:"
            " the MeterProvider is not the application's own"
            for name in sorted(
                [
                    metrics.CLIENT_DURATION,
                    metrics.SERVER_DURATION,
                    metrics.OPERATION_DURATION,
                ]
            )
        ]
    finally:
        own.shutdown()
        close(sdk)


def test_the_callers_sampled_flag_gives_sampled_requests_exemplars() -> None:
    own = ApplicationMetrics(runtime=False)
    try:
        assert own.reader is not None
        for sampled in (False, True, False, False):
            request = new_request("GET", "HTTP/1.1")
            own.request_started(request)
            own.request_finished(
                request,
                "/a",
                200,
                context=CONTEXTS[1] if sampled else CONTEXTS[2],
                seconds=0.001 if sampled else 0.2,
                sampled=sampled,
            )
        [point] = points(own.reader).values()
        assert point["count"] == 4
        assert point["exemplars"] == [(0.001, SAMPLED_TRACE, 0x00F067AA0BA902B7)]
    finally:
        own.shutdown()


def test_values_the_sdk_refuses_are_refused_once_bound() -> None:
    own = ApplicationMetrics(runtime=False)
    sdk_reader = InMemoryMetricReader()
    sdk = adopted(sdk_reader)
    try:
        assert own.reader is not None
        # Every SDK refuses a negative value; the older ones record the
        # infinite ones and NaN, the newer ones refuse them too.
        values = [0.1, 0.2, -1.0, math.inf, -math.inf, math.nan, 0.3]
        finish_all(own, [("GET", "/a", 200, None, "HTTP/1.1", v, 0) for v in values])
        finish_all(sdk, [("GET", "/a", 200, None, "HTTP/1.1", v, 0) for v in values])
        [point] = points(own.reader).values()
        [expected] = points(sdk_reader).values()
        assert point["count"] == expected["count"] in (3, 5)
        assert point["bucket_counts"] == expected["bucket_counts"]
    finally:
        own.shutdown()
        close(sdk)


def test_a_view_that_filters_attributes_is_recorded_through_the_sdk(
    log_records: list[logging.LogRecord],
) -> None:
    view = View(instrument_name=metrics.SERVER_DURATION, attribute_keys={"http.route"})
    # An adopted provider with a view, as an application's global one.
    reader = InMemoryMetricReader()
    app_metrics = adopted(reader, views=[view])
    # And the histogram of a provider with such a view, bound as if it
    # were the application's own: binding sees the view and gives up.
    bound_reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[bound_reader], views=[view])
    histogram = provider.get_meter("test").create_histogram(metrics.SERVER_DURATION)
    bound = BoundHistogram(metrics.SERVER_DURATION, histogram, owned=True)
    try:
        assert bound.bindable
        inputs = mixed_inputs(200)
        finish_all(app_metrics, inputs)
        series = metric_series.Series(metrics.SERVER_DURATION, 12)
        for method, route, status, _, version, seconds, _ in inputs:
            key = (method, route, status, None, "http", version)
            attributes = series.bind(
                key, lambda key=key: metric_series.server_attributes(*key)
            )
            bound.record(bound.set_of(attributes), seconds)
        assert not bound.bindable
        for got in (points(reader), points(bound_reader)):
            assert sum(p["count"] for p in got.values()) == len(inputs)
            assert {frozenset(dict(k)) for k in got} <= {
                frozenset({"http.route"}),
                frozenset(),
            }
        assert any(
            r.getMessage()
            == f"{metrics.SERVER_DURATION} is recorded through Histogram.record:"
            " a view filters its attributes"
            for r in log_records
        )
    finally:
        close(app_metrics)
        provider.shutdown()


@pytest.mark.skipif(
    not hasattr(MeterProvider, "add_metric_reader"),
    reason="this OpenTelemetry SDK cannot add a reader to a running provider",
)
def test_a_reader_added_or_removed_after_binding_sees_what_the_sdk_gives_it() -> None:
    own = ApplicationMetrics(runtime=False)
    try:
        assert own.reader is not None and own.provider is not None
        first = [("GET", "/a", 200, None, "HTTP/1.1", 0.1, 1)] * 3
        finish_all(own, first)
        later = InMemoryMetricReader()
        own.provider.add_metric_reader(later)  # type: ignore[attr-defined]
        finish_all(own, [("GET", "/a", 200, None, "HTTP/1.1", 0.2, 0)] * 2)
        [point] = points(later).values()
        assert (point["count"], point["sum"]) == (2, pytest.approx(0.4))
        own.provider.remove_metric_reader(later)  # type: ignore[attr-defined]
        finish_all(own, [("GET", "/a", 200, None, "HTTP/1.1", 0.3, 0)])
        [point] = points(own.reader).values()
        assert (point["count"], point["sum"]) == (6, pytest.approx(1.0))
        assert point["exemplars"] == [(0.1, SAMPLED_TRACE, 0x00F067AA0BA902B7)]
    finally:
        own.shutdown()


def test_made_up_methods_never_grow_the_cache_of_known_inputs() -> None:
    own = ApplicationMetrics(runtime=False, cardinality_limit=5)
    try:
        assert own.reader is not None
        made_up = [(f"M{i}", "/a", 200, None, "HTTP/1.1", 0.1, 0) for i in range(300)]
        routes = [("GET", f"/r{i}", 200, None, "HTTP/1.1", 0.1, 0) for i in range(300)]
        finish_all(own, made_up)
        assert not own._server_sets  # _OTHER's set is found through its key
        finish_all(own, routes)
        got = points(own.reader)
        other = frozenset(
            metric_series.server_attributes(
                "_OTHER", "/a", 200, None, "http", "HTTP/1.1"
            ).items()
        )
        assert got[other]["count"] == 300
        overflow = frozenset(metric_series.OVERFLOW_ATTRIBUTES.items())
        assert got[overflow]["count"] == 300 - 4
        assert len(own._server_sets) <= 2 * 5 + 16
    finally:
        own.shutdown()


def test_a_served_application_counts_sampled_and_unsampled_requests() -> None:
    async def main() -> None:
        app = Application(metrics_cardinality_limit=3)
        port = listen(app)
        sampled = f"00-{SAMPLED_TRACE:032x}-00f067aa0ba902b7-01"
        unsampled = f"00-{UNSAMPLED_TRACE:032x}-00f067aa0ba902b7-00"
        for status in ("200", "404", "500", "503", "200", "404"):
            for traceparent in (sampled, unsampled, unsampled):
                response = await fetch(
                    port,
                    f"/items/1?status={status}",
                    headers={"traceparent": traceparent},
                )
                assert response.code == int(status)
        families = await scrape(port, openmetrics=True)
        counts = {
            (
                s.labels.get("http_response_status_code", ""),
                s.labels.get("otel_metric_overflow", ""),
            ): s.value
            for s in samples(families, DURATION, DURATION + "_count")
        }
        # Three sets, then the fourth (503) past the limit.
        assert counts == {
            ("200", ""): 6,
            ("404", ""): 6,
            ("500", ""): 3,
            ("", "true"): 3,
        }
        buckets = samples(families, DURATION, DURATION + "_bucket")
        trace_ids = {b.exemplar.labels["trace_id"] for b in buckets if b.exemplar}
        assert trace_ids == {f"{SAMPLED_TRACE:032x}"}

    run(main())
