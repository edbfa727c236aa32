"""Metrics over real sockets: counts, active requests, exemplars, limits."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import shutil
import subprocess
import typing

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from tornado import httpclient

import divak
from divak import metrics
from divak.metrics import series as metric_series
from tests.conftest import listen, run
from tests.services.metrics_service import Application

DURATION = "http_server_request_duration_seconds"


async def fetch(port: int, path: str, **kwargs: typing.Any) -> httpclient.HTTPResponse:
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(
            f"http://127.0.0.1:{port}{path}", raise_error=False, **kwargs
        )
    finally:
        client.close()


async def scrape(port: int, openmetrics: bool = False) -> dict[str, typing.Any]:
    headers = (
        {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    )
    response = await fetch(port, "/metrics", headers=headers)
    assert response.code == 200
    text = response.body.decode()
    content_type = response.headers["Content-Type"]
    if openmetrics:
        assert content_type.startswith("application/openmetrics-text")
        families = parse_openmetrics(text)
    else:
        assert content_type.startswith("text/plain; version=0.0.4")
        families = parse_text(text)
    return {family.name: family for family in families}


def samples(
    families: dict[str, typing.Any], family: str, name: str
) -> list[typing.Any]:
    return (
        [s for s in families[family].samples if s.name == name]
        if family in families
        else []
    )


def counts_by_route_status(families: dict[str, typing.Any]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for sample in samples(families, DURATION, DURATION + "_count"):
        labels = sample.labels
        key = (
            labels.get("http_route", ""),
            labels.get("http_response_status_code", ""),
        )
        counts[key] += int(sample.value)
    return counts


def test_histogram_count_per_route_and_status_equals_requests_sent() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        plan = {"200": 7, "404": 3, "500": 2}
        sent: collections.Counter = collections.Counter()
        for status, times in plan.items():
            for index in range(times):
                response = await fetch(port, f"/items/{index}?status={status}")
                assert response.code == int(status)
                sent[("/items/{item_id}", status)] += 1
        response = await fetch(port, "/nowhere")
        assert response.code == 404
        sent[("", "404")] += 1

        families = await scrape(port)
        assert counts_by_route_status(families) == sent
        buckets = samples(families, DURATION, DURATION + "_bucket")
        les = {b.labels["le"] for b in buckets}
        assert {"0.005", "0.075", "2.5", "7.5", "10.0", "+Inf"} <= les
        errors = {
            s.labels.get("error_type")
            for s in samples(families, DURATION, DURATION + "_count")
            if s.labels.get("http_response_status_code") == "500"
        }
        assert errors == {"RuntimeError"}
        one = samples(families, DURATION, DURATION + "_count")[0].labels
        assert one["http_request_method"] == "GET"
        assert one["url_scheme"] == "http"
        assert one["network_protocol_version"] == "1.1"
        # no raw path anywhere: the route template keeps cardinality bounded
        assert not any("/items/1" in str(s.labels) for s in buckets)
        operations = samples(
            families,
            "divak_operation_duration_seconds",
            "divak_operation_duration_seconds_count",
        )
        assert [(s.labels["divak_operation_name"], s.value) for s in operations] == [
            ("query-db", 12.0)
        ]

    run(main())


def active(families: dict[str, typing.Any]) -> dict[str, float]:
    return {
        s.labels["http_request_method"]: s.value
        for s in samples(
            families, "http_server_active_requests", "http_server_active_requests"
        )
    }


def test_active_requests_back_at_zero_after_errors_disconnects_and_timeouts() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        # 405 is raised before prepare() (the handler has no POST method),
        # a path that matches no route is answered by Tornado's 404 handler.
        assert (await fetch(port, "/items/1", method="PUT", body="x")).code == 405
        assert (await fetch(port, "/items/1?status=500")).code == 500
        assert (await fetch(port, "/nowhere", method="DELETE")).code == 404
        # a client that gives up (timeout), and one that just closes
        with pytest.raises(httpclient.HTTPClientError) as timed_out:
            await fetch(port, "/slow?seconds=0.6", request_timeout=0.2)
        assert timed_out.value.code == 599
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow?seconds=0.6 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        during = await scrape(port)
        assert during_get_active(during) >= 2  # the two slow ones and the scrape
        writer.close()
        await asyncio.sleep(1.0)  # both slow handlers finished by now

        families = await scrape(port)
        assert active(families) == {
            "GET": 1.0,
            "PUT": 0.0,
            "DELETE": 0.0,
        }  # 1: this scrape
        counts = counts_by_route_status(families)
        assert counts[("/items/{item_id}", "405")] == 1
        disconnected = [
            s
            for s in samples(families, DURATION, DURATION + "_count")
            if s.labels.get("error_type") == "client_disconnected"
        ]
        assert sum(s.value for s in disconnected) == 2
        assert all(
            "http_response_status_code" not in s.labels
            or s.labels["http_response_status_code"] == ""
            for s in disconnected
        )

    run(main())


def during_get_active(families: dict[str, typing.Any]) -> float:
    return active(families).get("GET", 0.0)


def test_never_negative_when_finished_without_start_or_twice() -> None:
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    app_metrics = metrics.ApplicationMetrics("x")
    request = HTTPServerRequest(
        start_line=RequestStartLine("GET", "/a", "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "example"}),
    )
    app_metrics.request_finished(request, "/a", 500)  # never started: nothing
    app_metrics.request_started(request)
    app_metrics.request_finished(request, "/a", 200)
    app_metrics.request_finished(request, "/a", 200)  # second end: nothing
    data = app_metrics.collect()
    assert data is not None
    by_name = {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert [p.value for p in by_name[metrics.ACTIVE_REQUESTS].data.data_points] == [0]
    [point] = by_name[metrics.SERVER_DURATION].data.data_points
    assert point.count == 1


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_exemplars_carry_the_trace_id_of_sampled_requests_only() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        sampled = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00"
        assert (
            await fetch(port, "/items/1", headers={"traceparent": sampled})
        ).code == 200
        for _ in range(3):
            response = await fetch(port, "/items/2", headers={"traceparent": unsampled})
            assert response.code == 200

        families = await scrape(port, openmetrics=True)
        buckets = samples(families, DURATION, DURATION + "_bucket")
        exemplars = [b.exemplar for b in buckets if b.exemplar is not None]
        trace_ids = {e.labels["trace_id"] for e in exemplars}
        assert TRACE_ID in trace_ids
        assert "1" * 32 not in trace_ids
        exemplar = next(e for e in exemplars if e.labels["trace_id"] == TRACE_ID)
        assert len(exemplar.labels["span_id"]) == 16
        # unsampled requests are measured all the same
        counts = counts_by_route_status(families)
        assert counts[("/items/{item_id}", "200")] == 4

        text = await scrape(port)  # the classic format has no exemplars
        items = ("/items/{item_id}", "200")
        assert counts_by_route_status(text)[items] == counts[items]

    run(main())


def test_events_values_bounded_attributes_and_overflow(
    log_records: list[logging.LogRecord],
) -> None:
    async def main() -> None:
        app = Application(metrics_cardinality_limit=3)
        port = listen(app)
        for tenant in ["a", "b", "c", "d", "e"]:
            response = await fetch(
                port, f"/events?tenant={tenant}", method="POST", body=""
            )
            assert response.code == 200
        families = await scrape(port)
        events = samples(families, "divak_events", "divak_events_total")
        by_tenant = {s.labels.get("tenant", ""): s for s in events}
        assert set(by_tenant) == {"a", "b", "c", ""}
        overflow = by_tenant[""]
        assert overflow.labels["otel_metric_overflow"] == "true"
        assert overflow.value == 4.0  # d and e, 2 each
        # an absent label is an empty one for Prometheus
        assert all(
            s.labels.get("divak_event_name", "") in ("cache.miss", "") for s in events
        )
        waits = samples(families, "queue_wait_seconds", "queue_wait_seconds_count")
        assert sum(s.value for s in waits) == 5
        queues = {s.labels.get("queue") for s in waits}
        assert "q" * metric_series.MAX_VALUE_LENGTH in queues
        warnings = [
            r
            for r in log_records
            if r.name == "divak.metrics" and "otel.metric.overflow" in r.getMessage()
        ]
        assert len(warnings) == 1  # once, though two sets overflowed
        assert "divak.events" in warnings[0].getMessage()

    run(main())


def test_metrics_can_be_switched_off() -> None:
    async def main() -> None:
        app = Application(metrics=False)
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200
        # Nothing to scrape, and the answer says why: a Prometheus target
        # that scrapes it shows as down, with the reason.
        response = await fetch(port, "/metrics")
        assert response.code == 404
        assert b"settings['metrics'] is false" in response.body
        assert app.divak_metrics.provider is None

    run(main())


def test_client_request_duration_attributes() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        app_metrics = app.divak_metrics
        app_metrics.client_request_finished("GET", "inventory", 8080, 200, 0.01)
        app_metrics.client_request_finished("GET", "inventory", 8080, 503, 0.02)
        app_metrics.client_request_finished(
            "POST", "inventory", 8080, None, 1.0, "TimeoutError"
        )
        families = await scrape(port)
        name = "http_client_request_duration_seconds"
        got = {
            (
                s.labels["http_request_method"],
                s.labels["server_address"],
                s.labels["server_port"],
                s.labels.get("http_response_status_code", ""),
                s.labels.get("error_type", ""),
            ): s.value
            for s in samples(families, name, name + "_count")
        }
        assert got == {
            ("GET", "inventory", "8080", "200", ""): 1.0,
            ("GET", "inventory", "8080", "503", "503"): 1.0,
            ("POST", "inventory", "8080", "", "TimeoutError"): 1.0,
        }

    run(main())


def test_two_applications_in_one_process_do_not_share_metrics() -> None:
    async def main() -> None:
        first, second = Application(), Application()
        port_1, port_2 = listen(first), listen(second)
        for _ in range(3):
            assert (await fetch(port_1, "/items/1")).code == 200
        assert (await fetch(port_2, "/items/1")).code == 200
        assert (
            counts_by_route_status(await scrape(port_1))[("/items/{item_id}", "200")]
            == 3
        )
        assert (
            counts_by_route_status(await scrape(port_2))[("/items/{item_id}", "200")]
            == 1
        )

    run(main())


@pytest.mark.parametrize(
    "name,unit,expected",
    [
        ("http.server.request.duration", "s", "http_server_request_duration_seconds"),
        ("http.server.active_requests", "{request}", "http_server_active_requests"),
        ("payload.size", "By", "payload_size_bytes"),
        ("ratio", "1", "ratio"),
    ],
)
def test_prometheus_names(name: str, unit: str, expected: str) -> None:
    from divak.metrics.prometheus import prometheus_name

    assert prometheus_name(name, unit)[0] == expected


# -- the exposition as Prometheus and OpenTelemetry see it ---------------------
KNOWN_LINT = re.compile(
    # Semantic-convention names of up-down counters: Prometheus gauges whose
    # names end in _count (process.thread.count,
    # process.unix.file_descriptor.count); the OpenTelemetry Prometheus
    # exporter writes the same names.
    r"^process_(thread|unix_file_descriptor)_count non-histogram and non-summary"
    r' metrics should not have "_count" suffix$'
)


def promtool_check(text: str) -> None:
    """``promtool check metrics``: no error, and no lint but the known one."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not KNOWN_LINT.match(line.strip())
    ]
    assert result.returncode in (0, 3) and not problems, result


def test_scrapes_carry_the_resource_of_the_spans_and_the_scope() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200
        resource = app.divak_instrumentation.provider.resource.attributes
        for openmetrics in (False, True):
            response = await fetch(
                port,
                "/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"}
                if openmetrics
                else {},
            )
            text = response.body.decode()
            if openmetrics:
                families = {f.name: f for f in parse_openmetrics(text)}
                target = families["target"]
                assert target.type == "info"
            else:
                promtool_check(text)
                families = {f.name: f for f in parse_text(text)}
                target = families["target_info"]
            # target_info: the resource of the application's spans, once.
            [info] = target.samples
            assert info.name == "target_info" and info.value == 1
            assert info.labels == {
                key.replace(".", "_"): str(value) for key, value in resource.items()
            }
            assert info.labels["service_instance_id"]
            assert info.labels["service_name"] == "metered"
            # Every other sample names the instrumentation scope.
            others = [
                s for f in families.values() if f is not target for s in f.samples
            ]
            assert others
            for sample in others:
                assert sample.labels["otel_scope_name"] == "divak", sample
                assert sample.labels["otel_scope_version"] == divak.__version__

    run(main())


def test_the_meter_names_the_semantic_conventions_schema() -> None:
    from opentelemetry.semconv.schemas import Schemas

    reader = InMemoryMetricReader()
    app_metrics = metrics.ApplicationMetrics("x", readers=[reader], runtime=True)
    app_metrics.count_event("e")
    data = reader.get_metrics_data()
    [scope_metrics] = data.resource_metrics[0].scope_metrics
    assert scope_metrics.scope.name == "divak"
    assert scope_metrics.schema_url == metrics.SCHEMA_URL
    known = {schema.value for schema in Schemas}
    if metrics.SCHEMA_URL not in known:  # an older semantic-conventions package
        pytest.skip(f"the installed semantic conventions predate {metrics.SCHEMA_URL}")
    assert metrics.SCHEMA_URL in known
    app_metrics.shutdown()


def test_exemplars_are_seen_by_every_scraper() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        sampled = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        assert (
            await fetch(port, "/items/1", headers={"traceparent": sampled})
        ).code == 200

        def trace_ids(families: dict[str, typing.Any]) -> set[str]:
            buckets = samples(families, DURATION, DURATION + "_bucket")
            return {
                b.exemplar.labels["trace_id"] for b in buckets if b.exemplar is not None
            }

        # Two Prometheus servers scraping the same target (an HA pair), and
        # a later scrape after more, unsampled, requests: all see it.
        first = await scrape(port, openmetrics=True)
        second = await scrape(port, openmetrics=True)
        unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00"
        assert (
            await fetch(port, "/items/2", headers={"traceparent": unsampled})
        ).code == 200
        third = await scrape(port, openmetrics=True)
        for families in (first, second, third):
            assert TRACE_ID in trace_ids(families)

    run(main())


def test_scope_labels_can_be_left_out() -> None:
    async def main() -> None:
        app = Application(metrics_scope_labels=False)
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200
        families = await scrape(port)
        counts = counts_by_route_status(families)
        assert counts[("/items/{item_id}", "200")] == 1
        assert "target_info" in families  # the resource is still there
        labels = {
            label for f in families.values() for s in f.samples for label in s.labels
        }
        assert "otel_scope_name" not in labels and "otel_scope_version" not in labels

    run(main())
