"""Tracing end to end: real servers on 127.0.0.1, a real Zipkin endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from opentelemetry import trace
from opentelemetry.propagators.b3 import B3MultiFormat
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder, ZipkinCollector

from .conftest import flush, listen, run
from .zipkin_schema import validate_spans

third_party = logging.getLogger("thirdparty.client")


class Backend(divak.RequestTracker, divak.Logger, web.RequestHandler):
    async def get(self, item_id: str) -> None:
        with self.record_operation("query-db") as span:
            await asyncio.sleep(0.001)
            self.add_divak_tag("db.rows", 2)
            assert trace.get_current_span() is span
        third_party.info("third party inside handler")
        self.write({"id": item_id, "headers": dict(self.request.headers)})


class Frontend(
    divak.RequestTracker, divak.Logger, divak.HttpClientMixin, web.RequestHandler
):
    async def get(self) -> None:
        response = await self.send_request(self.settings["backend"] + "/items/7")
        self.write(response.body)


class Failing(divak.RequestTracker, divak.Logger, web.RequestHandler):
    def get(self) -> None:
        third_party.warning("about to fail")
        raise RuntimeError("boom")


class NotFound(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        raise web.HTTPError(404)


class Current(divak.RequestTracker, web.RequestHandler):
    """Uses OpenTelemetry directly, as other instrumentation would."""

    async def get(self) -> None:
        tracer = self.settings["foreign_tracer"]
        with tracer.start_as_current_span("foreign"):
            await asyncio.sleep(0)
        span = trace.get_current_span()
        self.write({"span_id": trace.format_span_id(span.get_span_context().span_id)})


class App(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, service: str, reporter, propagators=(), probability=None, **kw):
        super().__init__(
            [
                (r"/items/(?P<item_id>\d+)", Backend),
                (r"/front", Frontend),
                (r"/fail", Failing),
                (r"/missing", NotFound),
                (r"/current", Current),
            ],
            **kw,
        )
        self.set_divak_service(service)
        self.add_divak_reporter(reporter)
        for propagator in propagators:
            self.add_divak_propagator(propagator)
        if probability is not None:
            self.set_divak_sample_probability(probability)


def _fetch(port: int, path: str, headers: dict[str, str] | None = None):
    return httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", headers=headers or {}, raise_error=False
    )


def test_two_services_join_one_valid_zipkin_trace(collector: ZipkinCollector) -> None:
    async def scenario() -> None:
        backend = App("backend", divak.ZipkinReporter(collector.url))
        backend_port = listen(backend)
        frontend = App(
            "frontend",
            divak.ZipkinReporter(collector.url + "/spans"),
            backend=f"http://127.0.0.1:{backend_port}",
        )
        response = await _fetch(listen(frontend), "/front")
        assert response.code == 200
        await flush(backend, frontend)
        for app in (backend, frontend):
            app.divak_shutdown()

    run(scenario())
    spans = collector.wait_for(lambda spans: len(spans) >= 4)
    validate_spans(spans)
    assert len({span["traceId"] for span in spans}) == 1
    by_name = {(s["localEndpoint"]["serviceName"], s["name"]): s for s in spans}
    front = by_name[("frontend", "GET /front")]
    client = by_name[("frontend", "GET")]
    back = by_name[("backend", "GET /items/{item_id}")]
    query = by_name[("backend", "query-db")]
    assert "parentId" not in front
    assert client["parentId"] == front["id"] and client["kind"] == "CLIENT"
    assert back["parentId"] == client["id"] and back["kind"] == "SERVER"
    assert query["parentId"] == back["id"]
    assert "kind" not in query, "INTERNAL spans carry no kind"
    assert not any("debug" in span for span in spans)
    assert client["remoteEndpoint"]["ipv4"] == "127.0.0.1"
    assert client["remoteEndpoint"]["port"] > 0
    assert back["tags"]["http.route"] == "/items/{item_id}"
    assert back["tags"]["http.request.method"] == "GET"
    assert back["tags"]["url.path"] == "/items/7"
    assert back["tags"]["http.response.status_code"] == "200"
    assert back["tags"]["client.address"] == "127.0.0.1"
    assert back["tags"]["server.address"] == "127.0.0.1"
    assert back["tags"]["user_agent.original"].startswith("Tornado")
    assert query["tags"]["db.rows"] == "2"
    assert client["tags"]["url.full"].endswith("/items/7")
    assert client["tags"]["http.response.status_code"] == "200"
    assert client["tags"]["server.port"] == str(client["remoteEndpoint"]["port"])
    # Zipkin must not see uploads as traced work.
    assert all(headers.get("B3") == "0" for headers, _ in collector.posts)


def _headers_seen_downstream(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"].items()}


@pytest.mark.parametrize(
    "propagators, otel_propagator",
    [
        ([], TraceContextTextMapPropagator()),
        ([divak.ZipkinPropagation()], B3MultiFormat()),
        ([divak.ZipkinPropagation(), divak.TraceContextPropagation()], B3MultiFormat()),
    ],
    ids=["w3c-default", "b3", "b3-then-w3c"],
)
def test_interop_with_opentelemetry_propagators(propagators, otel_propagator) -> None:
    """Headers made by OpenTelemetry's own propagators are understood both ways."""
    recorder = SpanRecorder()
    provider = TracerProvider()
    upstream = provider.get_tracer("upstream")

    async def scenario() -> tuple[dict[str, str], trace.SpanContext]:
        backend = App("backend", SpanRecorder())
        frontend_app = App(
            "frontend",
            recorder,
            propagators,
            backend=f"http://127.0.0.1:{listen(backend)}",
        )
        port = listen(frontend_app)
        with upstream.start_as_current_span("caller") as caller:
            headers: dict[str, str] = {}
            otel_propagator.inject(headers)
        response = await _fetch(port, "/front", headers)
        assert response.code == 200
        await flush(frontend_app)
        return _headers_seen_downstream(response.body), caller.get_span_context()

    downstream, caller = run(scenario())
    server = recorder.named("GET /front")[0]
    client = recorder.named("GET")[0]
    assert server.context.trace_id == caller.trace_id
    assert server.parent is not None and server.parent.span_id == caller.span_id
    assert server.parent.is_remote
    extracted = trace.get_current_span(otel_propagator.extract(downstream))
    assert extracted.get_span_context().trace_id == caller.trace_id
    assert extracted.get_span_context().span_id == client.context.span_id


def test_b3_debug_is_exported_as_debug(collector: ZipkinCollector) -> None:
    async def scenario() -> None:
        app = App(
            "debugged", divak.ZipkinReporter(collector.url), [divak.ZipkinPropagation()]
        )
        port = listen(app)
        headers = {"X-B3-TraceId": "a" * 32, "X-B3-SpanId": "b" * 16, "X-B3-Flags": "1"}
        assert (await _fetch(port, "/items/1", headers)).code == 200
        assert (await _fetch(port, "/items/2")).code == 200
        await flush(app)

    run(scenario())
    spans = collector.wait_for(lambda spans: len(spans) >= 4)
    validate_spans(spans)
    debug = [s for s in spans if s["traceId"] == "a" * 32]
    assert len(debug) == 2 and all(s.get("debug") is True for s in debug)
    assert not any("divak.b3.debug" in s.get("tags", {}) for s in spans)
    assert not any("debug" in s for s in spans if s["traceId"] != "a" * 32)


BAD_HEADERS = [
    {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"},
    {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
    {"traceparent": "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    {"traceparent": "garbage" * 100},
    {"X-B3-TraceId": "not-hex", "X-B3-SpanId": "00f067aa0ba902b7", "X-B3-Sampled": "1"},
    {"b3": "4bf92f3577b34da6a3ce929d0e0e4736-short-1"},
    {"b3": "-" * 50},
]


@pytest.mark.parametrize("headers", BAD_HEADERS, ids=range(len(BAD_HEADERS)))
def test_malformed_trace_headers_start_a_new_trace(headers: dict[str, str]) -> None:
    recorder = SpanRecorder()

    async def scenario() -> tuple[int, dict[str, str]]:
        app = App(
            "robust",
            recorder,
            [divak.TraceContextPropagation(), divak.ZipkinPropagation()],
        )
        response = await _fetch(listen(app), "/items/3", headers)
        await flush(app)
        return response.code, _headers_seen_downstream(response.body)

    code, _ = run(scenario())
    assert code == 200
    (server,) = recorder.named("GET /items/{item_id}")
    assert server.parent is None
    assert server.context.trace_id not in (0, 0x4BF92F3577B34DA6A3CE929D0E0E4736)


@pytest.mark.parametrize(
    "value",
    ["x" * 129, "has space", "caf\u00e9", ""],
    ids=["oversized", "space", "non-ascii", "empty"],
)
def test_invalid_request_id_is_replaced_not_echoed(value: str) -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("ids", recorder, [divak.RequestIdPropagation()])
        port = listen(app)
        # Send raw bytes: the client library would refuse some of these.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /items/4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + b"Request-Id: "
            + value.encode("utf-8")
            + b"\r\n\r\n"
        )
        raw = await reader.read()
        writer.close()
        await flush(app)
        return raw

    raw = run(scenario())
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/1.1 ") and int(head[0].split()[1]) < 500
    echoed = [
        line.split(":", 1)[1].strip()
        for line in head
        if line.lower().startswith("request-id:")
    ]
    assert len(echoed) == 1
    assert echoed[0] != value.strip() and len(echoed[0]) == 36  # a new uuid4
    assert not any(line.lower().startswith("set-cookie") for line in head)


@pytest.mark.parametrize("value", [b"abc\r\n Set-Cookie: a=b", b"abc\rdef"])
def test_cr_or_lf_in_request_id_never_reaches_a_response(value: bytes) -> None:
    """Tornado refuses CR and folded lines itself; divak never echoes them."""

    async def scenario():
        app = App("ids", SpanRecorder(), [divak.RequestIdPropagation()])
        reader, writer = await asyncio.open_connection("127.0.0.1", listen(app))
        writer.write(
            b"GET /items/4 HTTP/1.1\r\nHost: x\r\nRequest-Id: " + value + b"\r\n\r\n"
        )
        raw = await reader.read()
        writer.close()
        return raw

    raw = run(scenario())
    assert b"set-cookie" not in raw.lower() and b"abc" not in raw
    # and a value carrying CR/LF that reaches the propagator is replaced
    propagator = divak.RequestIdPropagation()
    context = propagator.extract({"Request-Id": "abc\r\nSet-Cookie: a=b"})
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context)
    assert "\r" not in carrier["Request-Id"] and len(carrier["Request-Id"]) == 36


def test_request_id_is_echoed_on_errors_and_unknown_routes() -> None:
    async def scenario():
        app = App("ids", SpanRecorder(), [divak.RequestIdPropagation()])
        port = listen(app)
        results = {}
        for path in ("/items/5", "/fail", "/missing", "/no-such-route"):
            response = await _fetch(port, path, {"Request-Id": f"id-{path.strip('/')}"})
            results[path] = (response.code, response.headers.get("Request-Id"))
        fresh = await _fetch(port, "/no-such-route")
        return results, fresh.headers.get("Request-Id")

    results, fresh = run(scenario())
    assert results == {
        "/items/5": (200, "id-items/5"),
        "/fail": (500, "id-fail"),
        "/missing": (404, "id-missing"),
        "/no-such-route": (404, "id-no-such-route"),
    }
    assert fresh and len(fresh) == 36


def test_log_records_carry_the_request_ids(
    log_records: list[logging.LogRecord],
) -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("logs", recorder, [divak.RequestIdPropagation()])
        port = listen(app)
        ok = await _fetch(port, "/items/6", {"Request-Id": "req-ok"})
        failed = await _fetch(port, "/fail", {"Request-Id": "req-fail"})
        await flush(app)
        return ok.code, failed.code

    assert run(scenario()) == (200, 500)
    ok_trace = trace.format_trace_id(
        recorder.named("GET /items/{item_id}")[0].context.trace_id
    )
    fail_span = recorder.named("GET /fail")[0]
    fail_trace = trace.format_trace_id(fail_span.context.trace_id)

    def records(name: str, request_id: str) -> list[logging.LogRecord]:
        return [
            r
            for r in log_records
            if r.name == name and r.divak_request_id == request_id
        ]

    (access_ok,) = records("tornado.access", "req-ok")
    assert access_ok.otelTraceID == ok_trace and access_ok.levelno == logging.INFO
    assert access_ok.otelServiceName == "logs" and access_ok.otelTraceSampled is True
    assert "/items/6" in access_ok.getMessage() and "200" in access_ok.getMessage()
    (third_ok,) = records("thirdparty.client", "req-ok")
    assert third_ok.otelTraceID == ok_trace
    (access_fail,) = records("tornado.access", "req-fail")
    assert (
        access_fail.otelTraceID == fail_trace and access_fail.levelno == logging.ERROR
    )
    (third_fail,) = records("thirdparty.client", "req-fail")
    assert third_fail.otelTraceID == fail_trace
    uncaught = records("tornado.application", "req-fail")
    assert uncaught and all(r.otelTraceID == fail_trace for r in uncaught)
    # the span ended after Tornado's log lines were written, with the error
    assert fail_span.status.status_code is trace.StatusCode.ERROR
    assert fail_span.attributes["error.type"] == "RuntimeError"
    assert fail_span.attributes["http.response.status_code"] == 500
    assert [e.name for e in fail_span.events] == ["exception"]
    assert not [r for r in log_records if "Failed to detach context" in r.getMessage()]


def test_client_errors_leave_the_status_unset() -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("client-errors", recorder)
        assert (await _fetch(listen(app), "/missing")).code == 404
        await flush(app)

    run(scenario())
    (span,) = recorder.named("GET /missing")
    assert span.status.status_code is trace.StatusCode.UNSET
    assert span.attributes["http.response.status_code"] == 404
    assert "error.type" not in span.attributes


def test_unrouted_requests_get_a_server_span() -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("unrouted", recorder)
        assert (await _fetch(listen(app), "/nowhere")).code == 404
        await flush(app)

    run(scenario())
    (span,) = recorder.spans
    assert span.name == "GET" and span.kind is trace.SpanKind.SERVER
    assert span.attributes["url.path"] == "/nowhere"
    assert "http.route" not in span.attributes


def test_request_span_is_current_for_other_instrumentation(
    log_records: list[logging.LogRecord],
) -> None:
    recorder = SpanRecorder()
    foreign = InMemorySpanExporter()
    foreign_provider = TracerProvider()
    foreign_provider.add_span_processor(SimpleSpanProcessor(foreign))

    async def scenario():
        tracer = foreign_provider.get_tracer("x")
        app = App("current", recorder, foreign_tracer=tracer)
        responses = await asyncio.gather(
            *(_fetch(listen(app), "/current") for _ in range(3))
        )
        await flush(app)
        return [json.loads(r.body)["span_id"] for r in responses]

    reported = run(scenario())
    servers = recorder.named("GET /current")
    assert sorted(reported) == sorted(
        trace.format_span_id(s.context.span_id) for s in servers
    )
    foreign_spans = foreign.get_finished_spans()
    assert len(foreign_spans) == 3
    server_ids = {s.context.span_id for s in servers}
    assert {s.parent.span_id for s in foreign_spans} == server_ids
    assert not [r for r in log_records if "Failed to detach context" in r.getMessage()]


def test_keep_alive_requests_do_not_inherit_a_trace() -> None:
    """Two requests on one connection are two traces: no context leaks."""
    recorder = SpanRecorder()

    async def scenario():
        app = App("keepalive", recorder)
        reader, writer = await asyncio.open_connection("127.0.0.1", listen(app))
        for _ in range(2):
            writer.write(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
            head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(head.partition("content-length:")[2].split()[0])
            await reader.readexactly(length)
        writer.close()
        await flush(app)

    run(scenario())
    first, second = recorder.named("GET /missing")
    assert first.parent is None and second.parent is None
    assert first.context.trace_id != second.context.trace_id


@pytest.mark.parametrize("probability, expected", [(0.0, 0), (1.0, 10)])
def test_sampling_probability(probability: float, expected: int) -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("sampled", recorder, probability=probability)
        port = listen(app)
        for _ in range(10):
            assert (await _fetch(port, "/missing")).code == 404
        await flush(app)

    run(scenario())
    assert len(recorder.spans) == expected


def test_a_fractional_probability_samples_that_share_of_new_traces() -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("half", recorder, probability=0.5)
        port = listen(app)
        for _ in range(200):
            assert (await _fetch(port, "/missing")).code == 404
        await flush(app)

    run(scenario())
    # Binomial(200, 0.5): outside 60..140 once in about 10^8 runs.
    assert 60 <= len(recorder.spans) <= 140
    # and each sampled trace id is one the ratio sampler accepts
    bound = round(0.5 * (2**64 - 1))
    assert all(s.context.trace_id & 0xFFFFFFFFFFFFFFFF < bound for s in recorder.spans)


def test_upstream_sampled_flag_wins_over_probability_zero() -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = App("parent-based", recorder, [divak.TraceContextPropagation()], 0.0)
        port = listen(app)
        sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        unsampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        for header in (sampled, unsampled):
            assert (await _fetch(port, "/missing", {"traceparent": header})).code == 404
        await flush(app)

    run(scenario())
    (span,) = recorder.spans
    assert span.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_sample_probability_out_of_range(bad: float) -> None:
    app = App("x", SpanRecorder())
    with pytest.raises(ValueError):
        app.set_divak_sample_probability(bad)


def test_two_applications_never_share_a_provider() -> None:
    first, second = SpanRecorder(), SpanRecorder()

    async def scenario():
        one, two = App("one", first), App("two", second)
        assert one.divak_tracer_provider is not two.divak_tracer_provider
        assert trace.get_tracer_provider() not in (
            one.divak_tracer_provider,
            two.divak_tracer_provider,
        )
        await _fetch(listen(one), "/missing")
        await _fetch(listen(two), "/missing")
        await _fetch(listen(two), "/missing")
        await flush(one, two)

    run(scenario())
    assert len(first.spans) == 1 and len(second.spans) == 2
    assert first.spans[0].resource.attributes["service.name"] == "one"
    assert {s.resource.attributes["service.name"] for s in second.spans} == {"two"}


def test_service_name_falls_back_to_otel_service_name(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    app = divak.Recorder([])
    assert app.divak_service_name == "from-env"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://zipkin:9411/api/v2", "http://zipkin:9411/api/v2/spans"),
        ("http://zipkin:9411/api/v2/", "http://zipkin:9411/api/v2/spans"),
        ("http://zipkin:9411/api/v2/spans", "http://zipkin:9411/api/v2/spans"),
    ],
)
def test_zipkin_reporter_urls(url: str, expected: str) -> None:
    assert divak.ZipkinReporter(url).url == expected


def test_zipkin_reporter_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://collector:9411/api/v2/spans"
    )
    assert divak.ZipkinReporter().url == "http://collector:9411/api/v2/spans"


def test_logging_reporter_is_the_default(
    log_records: list[logging.LogRecord], monkeypatch
):
    monkeypatch.delenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", raising=False)

    async def scenario():
        app = divak.Recorder([(r"/items/(?P<item_id>\d+)", Backend)])
        app.set_divak_service("plain")
        assert (await _fetch(listen(app), "/items/9")).code == 200
        await flush(app)

    run(scenario())
    lines = [r.getMessage() for r in log_records if r.name == "divak.spans"]
    assert any(
        line.startswith("plain SERVER GET /items/{item_id} trace_id=") for line in lines
    )
    assert any(line.startswith("plain INTERNAL query-db ") for line in lines)


def test_first_valid_trace_context_wins_and_all_headers_go_downstream() -> None:
    recorder = SpanRecorder()
    headers = {
        # invalid W3C header first in precedence, then a valid B3 one
        "traceparent": "00-zzzz-00f067aa0ba902b7-01",
        "X-B3-TraceId": "1" * 32,
        "X-B3-SpanId": "2" * 16,
        "X-B3-Sampled": "1",
    }
    both = dict(headers, traceparent=f"00-{'3' * 32}-{'4' * 16}-01")

    async def scenario():
        backend = App("backend", SpanRecorder())
        app = App(
            "front",
            recorder,
            [divak.TraceContextPropagation(), divak.ZipkinPropagation()],
            backend=f"http://127.0.0.1:{listen(backend)}",
        )
        port = listen(app)
        first = await _fetch(port, "/front", headers)
        second = await _fetch(port, "/front", both)
        await flush(app)
        return _headers_seen_downstream(first.body), _headers_seen_downstream(
            second.body
        )

    downstream, _ = run(scenario())
    first, second = sorted(recorder.named("GET /front"), key=lambda s: s.start_time)
    assert first.context.trace_id == int("1" * 32, 16)
    assert second.context.trace_id == int("3" * 32, 16)
    (client, _) = sorted(recorder.named("GET"), key=lambda s: s.start_time)
    assert (
        downstream["traceparent"] == f"00-{'1' * 32}-{client.context.span_id:016x}-01"
    )
    assert downstream["x-b3-traceid"] == "1" * 32
    assert downstream["x-b3-spanid"] == f"{client.context.span_id:016x}"
    assert downstream["x-b3-sampled"] == "1"


def test_connection_failure_marks_the_client_span() -> None:
    recorder = SpanRecorder()

    class Unreachable(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
        async def get(self) -> None:
            try:
                await self.send_request(
                    f"http://127.0.0.1:{self.settings['dead']}/", retries=0
                )
            except OSError as error:
                self.write(type(error).__name__)

    async def scenario():
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            dead = sock.getsockname()[1]
        app = divak.Recorder([(r"/", Unreachable)], dead=dead)
        app.add_divak_reporter(recorder)
        response = await _fetch(listen(app), "/")
        await flush(app)
        return response

    response = run(scenario())
    assert response.code == 200 and b"ConnectionRefusedError" in response.body
    (client,) = recorder.named("GET")
    assert client.kind is trace.SpanKind.CLIENT
    assert client.status.status_code is trace.StatusCode.ERROR
    assert client.attributes["error.type"] == "ConnectionRefusedError"
    assert "http.response.status_code" not in client.attributes


def test_handlers_without_the_tracker_get_a_route_named_span() -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = divak.Recorder(
            [(r"/status", divak.StatusHandler)], divak_trace_probes=True
        )
        app.add_divak_reporter(recorder)
        assert (await _fetch(listen(app), "/status")).code == 200
        await flush(app)

    run(scenario())
    (span,) = recorder.spans
    assert span.name == "GET /status"
    assert span.attributes["http.route"] == "/status"
