"""Faults that must stay quiet, bounded and counted once (issue 15, items 3, 6)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import pydoc
import ssl
import threading
import time
import typing
import urllib.error
import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from tornado import httpclient, web

import divak
from divak.export import SpanQueue
from divak.logs.ratelimit import RateLimitedLog, describe_error
from divak.testing import ZipkinCollector
from tests.conftest import free_port, listen, run
from tests.zipkin_schema import validate_spans


class Hello(divak.Logger, divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        size = int(self.get_query_argument("payload", "0"))
        if size:
            trace.get_current_span().set_attribute("payload", "x" * size)
        self.write({"ok": True})


class App(divak.Recorder, divak.Application):
    def __init__(self, reporter: SpanExporter, **settings: typing.Any) -> None:
        super().__init__([(r"/", Hello)], **settings)
        self.set_divak_service("hardening")
        self.add_divak_reporter(reporter)


async def get_many(port: int, count: int, path: str = "/") -> list[int]:
    client = httpclient.AsyncHTTPClient()
    codes = []
    for _ in range(count):
        response = await client.fetch(
            f"http://127.0.0.1:{port}{path}", raise_error=False
        )
        codes.append(response.code)
    return codes


def serve(app: App, count: int, path: str = "/") -> list[int]:
    async def go() -> list[int]:
        port = listen(app)
        try:
            return await get_many(port, count, path)
        finally:
            app._test_server.stop()

    return run(go())


def warnings_of(records: list[logging.LogRecord], prefix: str) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name.startswith(prefix) and r.levelno >= logging.WARNING
    ]


class Raising(SpanExporter):
    """A reporter with a bug: every export raises."""

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("reporter bug")


def test_raising_reporter_is_logged_rarely_and_counted_by_the_queue(
    monkeypatch: pytest.MonkeyPatch, log_records: list[logging.LogRecord]
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")  # a batch per span
    app = App(Raising())
    assert serve(app, 20) == [200] * 20
    assert app.divak_force_flush(10)
    queue = app.divak_span_queues[0]
    assert queue.failed_spans == 20 and queue.exported_spans == 0
    assert app.divak_dropped_spans == 20
    warnings = warnings_of(log_records, "divak.reporters")
    assert len(warnings) == 1, warnings  # not one per batch
    assert "RuntimeError: reporter bug" in warnings[0]
    app.divak_shutdown()


def test_rate_limited_log_says_how_many_lines_it_suppressed(
    log_records: list[logging.LogRecord],
) -> None:
    complain = RateLimitedLog(logging.getLogger("divak.test"), interval=0.3)
    assert complain(logging.WARNING, "broken %d", 1)
    assert not any(complain(logging.WARNING, "broken %d", n) for n in range(2, 6))
    assert complain.suppressed == 4
    time.sleep(0.35)
    assert complain(logging.WARNING, "broken %d", 6)
    messages = [r.getMessage() for r in log_records if r.name == "divak.test"]
    assert messages == ["broken 1", "broken 6 (4 more like this since the last line)"]


class _Raise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("filter bug")


def test_export_thread_survives_a_raising_log_filter(
    collector: ZipkinCollector,
) -> None:
    reporter = divak.ZipkinReporter(
        f"http://127.0.0.1:{free_port()}/api/v2", retry_for=0
    )
    app = App(reporter)
    broken = _Raise()
    reporters_logger = logging.getLogger("divak.reporters")
    reporters_logger.addFilter(broken)
    try:
        assert serve(app, 5) == [200] * 5
        assert app.divak_force_flush(10)  # failed uploads, logging raised
    finally:
        reporters_logger.removeFilter(broken)
    assert app.divak_span_queues[0].failed_spans == 5
    reporter.url = collector.url + "/spans"  # the collector is back
    assert serve(app, 5) == [200] * 5
    assert app.divak_force_flush(10)
    assert len(collector.wait_for(lambda spans: len(spans) >= 5, timeout=10)) == 5
    assert app.divak_span_queues[0].exported_spans == 5
    app.divak_shutdown()


class _Broken(textmap.TextMapPropagator):
    """A propagator with a bug in ``inject``."""

    def extract(
        self,
        carrier: typing.Any,
        context: Context | None = None,
        getter: typing.Any = textmap.default_getter,
    ) -> Context:
        return context if context is not None else Context()

    def inject(
        self,
        carrier: typing.Any,
        context: Context | None = None,
        setter: typing.Any = textmap.default_setter,
    ) -> None:
        raise KeyError("propagator bug")

    @property
    def fields(self) -> set[str]:
        return {"x-broken"}


class Downstream(web.RequestHandler):
    def initialize(self, seen: list[dict[str, str]]) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(dict(self.request.headers))
        status = int(self.get_query_argument("status", "200"))
        self.set_status(status)
        self.write("down")


class Calling(divak.HttpClientMixin, divak.RequestTracker, web.RequestHandler):
    async def get(self) -> None:
        url = self.get_query_argument("url")
        response = await self.send_request(url, retries=0)
        self.write({"status": response.code})


def test_an_upload_failure_is_described_by_its_innermost_reason() -> None:
    """urllib3 wraps the socket error as its cause, urllib as its argument."""
    urllib3 = pytest.importorskip("urllib3")
    refused = "ConnectionRefusedError: [Errno 111] Connection refused"
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    with pytest.raises(urllib3.exceptions.MaxRetryError) as pooled:
        urllib3.PoolManager(retries=0).request("GET", url)
    assert describe_error(pooled.value) == refused
    with pytest.raises(urllib.error.URLError) as plain:
        urllib.request.urlopen(url, timeout=5)
    assert describe_error(plain.value) == refused
    # An error whose "reason" is text says it itself; a cycle ends.
    assert describe_error(ssl.SSLError(1, "bad record")).startswith("SSLError: ")
    first, second = ValueError("first"), ValueError("second")
    first.__cause__, second.__cause__ = second, first
    assert describe_error(first) == "ValueError: second"


def test_raising_propagator_costs_its_headers_not_the_request(
    log_records: list[logging.LogRecord],
) -> None:
    seen: list[dict[str, str]] = []

    async def go() -> list[int]:
        down = listen(web.Application([(r"/", Downstream, {"seen": seen})]))
        app = divak.Recorder([(r"/call", Calling)])
        app.add_divak_reporter(divak.testing.SpanRecorder())
        app.add_divak_propagator(_Broken())
        app.add_divak_propagator(divak.TraceContextPropagation())
        app.add_divak_propagator(divak.RequestIdPropagation())
        port = listen(app)
        return await get_many(port, 5, f"/call?url=http://127.0.0.1:{down}/")

    assert run(go()) == [200] * 5
    assert len(seen) == 5
    assert all("Traceparent" in headers for headers in seen)
    assert all("Request-Id" in headers for headers in seen)
    warnings = [
        r
        for r in log_records
        if r.name.startswith("divak.propagation") and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "failed to inject" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None  # a bug: the traceback helps


def test_queue_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIVAK_SPAN_QUEUE_MAX_BYTES", "60000")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    with ZipkinCollector(delay=0.5) as slow:
        app = App(divak.ZipkinReporter(slow.url, timeout=10))
        assert serve(app, 30, "/?payload=10000") == [200] * 30
        queue = app.divak_span_queues[0]
        assert queue.max_queue_bytes == 60000 and queue.max_queue_size == 2048
        assert queue.pending_bytes <= 60000
        assert app.divak_force_flush(30)
        assert queue.pending_bytes == 0
        assert queue.dropped_spans > 0
        assert queue.dropped_spans + queue.exported_spans == 30
        assert len(slow.spans) == queue.exported_spans
        app.divak_shutdown()


def _big_attribute(span: trace.Span, text: str) -> None:
    span.set_attribute("payload", text)


def _big_array(span: trace.Span, text: str) -> None:
    span.set_attribute("payload", [text[:1000]] * (len(text) // 1000))


def _big_event(span: trace.Span, text: str) -> None:
    span.add_event("exception", {"exception.stacktrace": text})


def _big_link(span: trace.Span, text: str) -> None:
    context = trace.SpanContext(1, 2, is_remote=True)
    span.add_link(context, {"payload": text})


@pytest.mark.parametrize(
    "fill", [_big_attribute, _big_array, _big_event, _big_link]
)
def test_queue_bytes_count_attributes_arrays_events_and_links(
    fill: typing.Callable[[trace.Span, str], None],
) -> None:
    """20 kB spans, however they carry it, fill a 100 kB queue after five."""
    release = threading.Event()

    class Stuck(SpanExporter):  # a collector that is down
        def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.SUCCESS

    queue = SpanQueue(
        Stuck(), max_batch_size=1, schedule_delay=0.01, max_queue_bytes=100_000
    )
    provider = TracerProvider()
    provider.add_span_processor(queue)
    tracer = provider.get_tracer("test")
    tracer.start_span("first").end()  # the batch the worker is stuck on
    assert _wait_for(lambda: queue.pending_spans == 0)
    for _ in range(20):
        span = tracer.start_span("big")
        fill(span, "x" * 20_000)
        span.end()
    assert 4 <= queue.pending_spans <= 5, queue.pending_spans
    assert 80_000 <= queue.pending_bytes <= 100_000
    assert queue.dropped_spans == 20 - queue.pending_spans
    release.set()
    provider.shutdown()


def _wait_for(condition: typing.Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_flush_timeout_is_in_seconds() -> None:
    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(30)
            return SpanExportResult.SUCCESS

    queue = SpanQueue(Stuck(), schedule_delay=0.01)
    provider = TracerProvider()
    provider.add_span_processor(queue)
    provider.get_tracer("test").start_span("stuck").end()
    started = time.monotonic()
    assert queue.flush(0.3) is False
    assert queue.force_flush(300) is False  # the SDK's hook, in milliseconds
    assert time.monotonic() - started < 5
    release.set()
    assert queue.flush(10.0) is True
    provider.shutdown()


@pytest.mark.parametrize(
    ("init", "words"),
    [
        (divak.ZipkinReporter.__init__, ["retry_for", "seconds", "url"]),
        (divak.OTLPReporter.__init__, ["endpoint", "seconds"]),
        (divak.LoggingReporter.__init__, ["logger_name"]),
        (SpanQueue.__init__, ["max_queue_bytes", "seconds"]),
    ],
)
def test_reporters_document_their_own_constructor(
    init: typing.Callable[..., None], words: list[str]
) -> None:
    doc = inspect.getdoc(init) or ""
    assert all(word in doc for word in words), doc
    assert "OpenTelemetry" not in pydoc.render_doc(init).split("\n")[2]
    assert "retry_for" in str(inspect.signature(divak.ZipkinReporter))


class Front(divak.HttpClientMixin, divak.RequestTracker, web.RequestHandler):
    async def get(self) -> None:
        url = self.get_query_argument("url")
        await self.send_request(url, retries=0)
        tracer = self.application.divak_tracer
        with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT) as span:
            span.set_attribute("peer.service", "Billing")
            span.set_attribute("server.address", "billing.internal")
            span.set_attribute("server.port", 8443)
        self.write("ok")


def test_zipkin_endpoints_tags_and_error_reasons(collector: ZipkinCollector) -> None:
    seen: list[dict[str, str]] = []

    async def go() -> None:
        down = listen(web.Application([(r"/", Downstream, {"seen": seen})]))
        app = divak.Recorder([(r"/front", Front)])
        app.set_divak_service("Front-End")
        app.add_divak_reporter(divak.ZipkinReporter(collector.url))
        port = listen(app)
        codes = await get_many(
            port, 1, f"/front?url=http://127.0.0.1:{down}/%3Fstatus%3D503"
        )
        assert codes == [200]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, app.divak_force_flush, 10.0)
        app.divak_shutdown()

    run(go())
    spans = collector.wait_for(lambda spans: len(spans) >= 3, timeout=10)
    validate_spans(spans)
    by_name = {s["name"]: s for s in spans}
    server = by_name["GET /front"]
    assert server["localEndpoint"]["serviceName"] == "front-end"
    # service.name is the localEndpoint; other resource attributes stay tags
    assert "service.name" not in server["tags"]
    assert server["tags"]["telemetry.sdk.language"] == "python"
    # an uninstrumented downstream is named after its address
    plain = next(s for s in spans if s["name"] == "GET")
    assert plain["remoteEndpoint"]["serviceName"] == "127.0.0.1"
    assert plain["remoteEndpoint"]["ipv4"] == "127.0.0.1"
    # a failed span without a status description gets a reason
    assert plain["tags"]["error"] == "503 Service Unavailable"
    # peer.service wins, lower-cased as Zipkin stores it
    charge = by_name["charge"]
    assert charge["remoteEndpoint"] == {"serviceName": "billing", "port": 8443}
    assert "error" not in charge["tags"]
