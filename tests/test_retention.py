"""Retention: failed and slow requests exported although the sampler dropped them.

Over real sockets, with a real Zipkin endpoint and a sampler that samples
nothing: a 5xx answer and an unhandled exception reach Zipkin with the
trace id the request's log records carried, ``divak.retained`` and the
request's ``record_operation`` spans; a slow request does with a slow
threshold; a fast 200 does not; sampled requests are exported as before;
the rate limit caps what is kept and counts the rest; the headers sent
downstream during a retained request said "not sampled".
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from prometheus_client.parser import text_string_to_metric_families
from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder, ZipkinCollector

from .conftest import flush, listen, run

Span = dict[str, typing.Any]


class Boom(Exception):
    """What the raising handler raises."""


BOOM_TYPE = f"{__name__}.Boom"

#: The headers the downstream endpoint received, in order.
RECEIVED: list[dict[str, str]] = []


class Fails(divak.RequestTracker, web.RequestHandler):
    """Three operations (two nested), then a 503."""

    def get(self) -> None:
        with self.record_operation("load", {"db.system.name": "postgresql"}):
            pass
        with self.record_operation("outer"):
            with self.record_operation("inner"):
                pass
        raise web.HTTPError(503)


class Raises(divak.RequestTracker, web.RequestHandler):
    """An operation that raises; the exception escapes the handler."""

    def get(self) -> None:
        with self.record_operation("explode"):
            raise Boom("boom")


class Slow(divak.RequestTracker, web.RequestHandler):
    """A 200, after 0.2 s inside an operation."""

    async def get(self) -> None:
        with self.record_operation("nap"):
            await asyncio.sleep(0.2)
        self.write("late")


class Fast(divak.RequestTracker, web.RequestHandler):
    """A 200 at once, with an operation."""

    def get(self) -> None:
        with self.record_operation("quick"):
            self.write("ok")


class Many(divak.RequestTracker, web.RequestHandler):
    """100 operations, then a 500."""

    def get(self) -> None:
        for index in range(100):
            with self.record_operation(f"step-{index}"):
                pass
        self.send_error(500)


class Calls(divak.HttpClientMixin, divak.RequestTracker, web.RequestHandler):
    """Calls the downstream endpoint, then fails."""

    async def get(self) -> None:
        port = self.request.host.rpartition(":")[2]
        await self.send_request(f"http://127.0.0.1:{port}/downstream", retries=0)
        raise web.HTTPError(500)


class Downstream(web.RequestHandler):
    """Keeps the headers it receives."""

    def get(self) -> None:
        RECEIVED.append(dict(self.request.headers))
        self.write("ok")


ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    ("/fails", Fails),
    ("/raises", Raises),
    ("/slow", Slow),
    ("/fast", Fast),
    ("/many", Many),
    ("/calls", Calls),
    ("/downstream", Downstream),
    ("/metrics", divak.MetricsHandler),
]


class App(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
    def __init__(
        self,
        reporter: typing.Any,
        probability: float = 0.0,
        retention: dict[str, typing.Any] | None = None,
        **settings: typing.Any,
    ) -> None:
        super().__init__(ROUTES, **settings)
        self.set_divak_service("retention")
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())
        self.add_divak_reporter(reporter)
        self.set_divak_sample_probability(probability)
        if retention is not None:
            self.set_divak_retention(**retention)


def zipkin(collector: ZipkinCollector) -> divak.ZipkinReporter:
    return divak.ZipkinReporter(collector.url)


def serve(
    app: App, paths: typing.Sequence[str]
) -> tuple[dict[str, httpclient.HTTPResponse], str]:
    """GET each path in turn; flush the spans; return the responses and metrics."""

    async def go() -> tuple[dict[str, httpclient.HTTPResponse], str]:
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        responses = {}
        try:
            for path in paths:
                responses[path] = await client.fetch(
                    f"http://127.0.0.1:{port}{path}", raise_error=False
                )
            await flush(app)
            metrics = await client.fetch(f"http://127.0.0.1:{port}/metrics")
        finally:
            client.close()
            app._test_server.stop()
        return responses, metrics.body.decode()

    return typing.cast(
        tuple[dict[str, httpclient.HTTPResponse], str], run(go())
    )


def logged_ids(records: list[logging.LogRecord], route: str) -> list[tuple[str, str]]:
    """(trace id, span id) of each access line of *route*, in order."""
    return [
        (record.otelTraceID, record.otelSpanID)  # type: ignore[attr-defined]
        for record in records
        if record.name == "tornado.access"
        and getattr(record, "http.route", None) == route
    ]


def server_span(spans: list[Span], trace_id: str) -> Span:
    (found,) = [
        s for s in spans if s["traceId"] == trace_id and s.get("kind") == "SERVER"
    ]
    return found


def named(spans: list[Span], trace_id: str, name: str) -> Span:
    (found,) = [s for s in spans if s["traceId"] == trace_id and s["name"] == name]
    return found


def test_a_5xx_is_exported_with_its_ids_and_operations(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    app = App(zipkin(collector))  # retention as by default: errors kept
    before = time.time()
    responses, _ = serve(app, ["/fast", "/fails"])
    after = time.time()
    assert responses["/fails"].code == 503
    (fast_ids,) = logged_ids(log_records, "/fast")
    ((trace_id, span_id),) = logged_ids(log_records, "/fails")
    request_id = responses["/fails"].headers["Request-Id"]
    spans = collector.wait_for(lambda got: len(got) >= 4)
    assert not [s for s in spans if s["traceId"] == fast_ids[0]]  # a fast 200
    server = server_span(spans, trace_id)
    assert server["id"] == span_id
    assert "parentId" not in server  # a new trace
    assert server["name"] == "GET /fails"
    tags = server["tags"]
    assert tags["divak.retained"] == "error"
    assert tags["http.response.status_code"] == "503"
    assert tags["error.type"] == "503"
    assert tags["otel.status_code"] == "ERROR"
    assert tags["http.route"] == "/fails"
    assert tags["url.path"] == "/fails"
    assert tags["http.request.method"] == "GET"
    assert tags["divak.request_id"] == request_id
    assert server["localEndpoint"]["serviceName"] == "retention"
    assert before * 1e6 <= server["timestamp"]
    assert server["timestamp"] + server["duration"] <= after * 1e6
    load = named(spans, trace_id, "load")
    outer = named(spans, trace_id, "outer")
    inner = named(spans, trace_id, "inner")
    assert load["parentId"] == outer["parentId"] == span_id
    assert inner["parentId"] == outer["id"]
    assert load["tags"]["db.system.name"] == "postgresql"
    assert "divak.retained" not in load["tags"]
    assert server["timestamp"] <= load["timestamp"] <= outer["timestamp"]
    assert outer["timestamp"] <= inner["timestamp"]
    assert inner["timestamp"] + inner["duration"] <= outer["timestamp"] + outer[
        "duration"
    ]
    assert len({s["id"] for s in spans if s["traceId"] == trace_id}) == 4


def test_an_unhandled_exception_is_exported_with_its_event(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    app = App(zipkin(collector), retention={"errors": True})
    responses, _ = serve(app, ["/raises"])
    assert responses["/raises"].code == 500
    ((trace_id, span_id),) = logged_ids(log_records, "/raises")
    spans = collector.wait_for(lambda got: len(got) >= 2)
    server = server_span(spans, trace_id)
    assert server["id"] == span_id
    assert server["tags"]["divak.retained"] == "error"
    assert server["tags"]["error.type"] == BOOM_TYPE
    assert server["tags"]["http.response.status_code"] == "500"
    (annotation,) = server["annotations"]
    assert '"exception"' in annotation["value"] and "Boom" in annotation["value"]
    explode = named(spans, trace_id, "explode")
    assert explode["parentId"] == span_id
    assert explode["tags"]["otel.status_code"] == "ERROR"
    assert explode["tags"]["error"] == "Boom: boom"
    assert "boom" in explode["annotations"][0]["value"]


def test_a_slow_request_is_exported_as_slow(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    app = App(zipkin(collector), retention={"errors": False, "slow": 0.05})
    responses, _ = serve(app, ["/fast", "/raises", "/slow"])
    assert responses["/slow"].code == 200
    ((trace_id, span_id),) = logged_ids(log_records, "/slow")
    spans = collector.wait_for(lambda got: len(got) >= 2)
    app.divak_force_flush()
    assert {s["traceId"] for s in collector.spans} == {trace_id}  # errors off
    server = server_span(spans, trace_id)
    assert server["id"] == span_id
    assert server["tags"]["divak.retained"] == "slow"
    assert server["tags"]["http.response.status_code"] == "200"
    assert "error.type" not in server["tags"]
    assert server["duration"] >= 200_000  # µs
    nap = named(spans, trace_id, "nap")
    assert nap["parentId"] == span_id
    assert nap["duration"] >= 200_000


def test_sampled_requests_are_exported_as_before(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    # slow=0 would retain every request: sampled ones must not be touched.
    app = App(zipkin(collector), 1.0, {"errors": True, "slow": 0.0})
    serve(app, ["/fails", "/fast"])
    ((fails_trace, _),) = logged_ids(log_records, "/fails")
    ((fast_trace, _),) = logged_ids(log_records, "/fast")
    collector.wait_for(lambda got: len(got) >= 6)
    app.divak_force_flush()
    spans = collector.spans
    assert sorted(s["name"] for s in spans if s["traceId"] == fails_trace) == [
        "GET /fails",
        "inner",
        "load",
        "outer",
    ]
    assert sorted(s["name"] for s in spans if s["traceId"] == fast_trace) == [
        "GET /fast",
        "quick",
    ]
    assert not [s for s in spans if "divak.retained" in s.get("tags", {})]


def test_the_rate_limit_caps_and_counts(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    # One token, refilled every 1000 s: the first failure only.
    app = App(zipkin(collector), retention={"max_per_second": 0.001})
    _, metrics = serve(app, ["/fails"] * 5)
    ids = logged_ids(log_records, "/fails")
    assert len(ids) == 5
    collector.wait_for(lambda got: len(got) >= 4)
    app.divak_force_flush()
    assert {s["traceId"] for s in collector.spans} == {ids[0][0]}
    (family,) = [
        f
        for f in text_string_to_metric_families(metrics)
        if f.name == "divak_retention_dropped"
    ]
    (sample,) = [s for s in family.samples if s.name.endswith("_total")]
    assert sample.labels["divak_retained"] == "error"
    assert sample.value == 4
    warnings = [
        r
        for r in log_records
        if r.name == "divak.retention" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1  # once a minute at most
    assert "divak.retention.dropped" in warnings[0].getMessage()


def test_downstream_headers_of_a_retained_request_said_not_sampled(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    RECEIVED.clear()
    app = App(zipkin(collector))
    responses, _ = serve(app, ["/calls"])
    assert responses["/calls"].code == 500
    ((trace_id, span_id),) = logged_ids(log_records, "/calls")
    spans = collector.wait_for(lambda got: len(got) >= 1)
    assert server_span(spans, trace_id)["tags"]["divak.retained"] == "error"
    (headers,) = RECEIVED
    version, sent_trace, _parent, flags = headers["Traceparent"].split("-")
    assert sent_trace == trace_id
    assert int(flags, 16) & 1 == 0  # sampled flag off, as the request decided


def test_operations_beyond_64_are_counted_not_kept(
    collector: ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    app = App(zipkin(collector))
    serve(app, ["/many"])
    ((trace_id, _),) = logged_ids(log_records, "/many")
    collector.wait_for(lambda got: len(got) >= 65)
    app.divak_force_flush()
    spans = collector.trace(trace_id)
    names = {s["name"] for s in spans}
    assert len(spans) == 65
    assert names == {"GET /many", *(f"step-{i}" for i in range(64))}
    server = server_span(spans, trace_id)
    assert server["tags"]["divak.retained.operations_dropped"] == "36"


def test_retained_spans_encode_as_otlp() -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    serve(app, ["/raises"])
    spans = recorder.find(trace_id=None)
    assert len(spans) == 2
    server = recorder.one("GET /raises")
    encoded = encode_spans(spans)
    (resource_spans,) = encoded.resource_spans
    service = {
        a.key: a.value.string_value for a in resource_spans.resource.attributes
    }
    assert service["service.name"] == "retention"
    (scope_spans,) = resource_spans.scope_spans
    by_name = {s.name: s for s in scope_spans.spans}
    otlp = by_name["GET /raises"]
    assert otlp.trace_id == server.context.trace_id.to_bytes(16, "big")
    assert otlp.span_id == server.context.span_id.to_bytes(8, "big")
    assert server.context.trace_flags.sampled  # the exported copy: recorded
    assert otlp.events[0].name == "exception"
    assert by_name["explode"].parent_span_id == otlp.span_id


def test_retention_from_settings_and_environment(
    collector: ZipkinCollector,
    log_records: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIVAK_RETENTION_SLOW", "0.05")
    monkeypatch.setenv("DIVAK_RETENTION_ERRORS", "yes")  # the setting wins
    app = App(zipkin(collector), divak_retention_errors=False)
    serve(app, ["/raises", "/slow"])
    ((slow_trace, _),) = logged_ids(log_records, "/slow")
    collector.wait_for(lambda got: len(got) >= 2)
    app.divak_force_flush()
    assert {s["traceId"] for s in collector.spans} == {slow_trace}
    assert server_span(collector.spans, slow_trace)["tags"]["divak.retained"] == (
        "slow"
    )


def test_invalid_retention_settings_are_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIVAK_RETENTION_SLOW", "soon")
    with pytest.raises(ValueError, match="DIVAK_RETENTION_SLOW"):
        App(SpanRecorder())
    monkeypatch.delenv("DIVAK_RETENTION_SLOW")
    with pytest.raises(ValueError, match="divak_retention_max_per_second"):
        App(SpanRecorder(), divak_retention_max_per_second=-1)
    with pytest.raises(ValueError, match="slow"):
        App(SpanRecorder(), retention={"slow": -1})
