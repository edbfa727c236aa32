"""A dead, slow or flaky collector never hurts the service (issue 6, part 3)."""

from __future__ import annotations

import logging
import time
import typing

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from tornado import httpclient, httpserver, netutil, web

import divak
from divak.export import SpanQueue
from divak.testing import ZipkinCollector
from tests.conftest import free_port, listen, run

REQUESTS = 40


class Handler(divak.Logger, divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write({"ok": True})


class App(divak.Recorder, divak.Application):
    def __init__(self, reporter: SpanExporter) -> None:
        super().__init__([(r"/", Handler)])
        self.set_divak_service("failure")
        self.add_divak_reporter(reporter)
        self.add_divak_propagator(divak.RequestIdPropagation())


def serve(app: App, requests: int = REQUESTS) -> list[int]:
    """Send *requests* GETs, ten at a time; return the status codes."""

    async def go() -> list[int]:
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        codes: list[int] = []
        for _ in range(requests // 10):
            responses = await _gather(
                client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
                for _ in range(10)
            )
            codes.extend(r.code for r in responses)
        app._test_server.stop()
        return codes

    return run(go())


async def _gather(futures: typing.Iterable[typing.Any]) -> list[typing.Any]:
    import asyncio

    return list(await asyncio.gather(*futures))


def divak_warnings(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [
        r
        for r in records
        if r.name.startswith("divak.reporters") and r.levelno >= logging.WARNING
    ]


def test_collector_down_costs_no_request_and_is_counted(log_records):
    reporter = divak.ZipkinReporter(
        f"http://127.0.0.1:{free_port()}/api/v2", retry_for=0.6
    )
    app = App(reporter)
    assert serve(app) == [200] * REQUESTS
    assert app.divak_force_flush(15)
    assert app.divak_dropped_spans == REQUESTS
    assert reporter.failed_spans == REQUESTS
    assert reporter.exported_spans == 0
    warnings = divak_warnings(log_records)
    # one line, rate-limited, no traceback - however many batches failed
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    message = warnings[0].getMessage()
    assert "\n" not in message and warnings[0].exc_info is None
    assert "cannot send" in message and "Connection refused" in message
    app.divak_shutdown()


def test_slow_collector_drops_are_counted_and_summarised(monkeypatch, log_records):
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    with ZipkinCollector(delay=1.5) as slow:
        app = App(divak.ZipkinReporter(slow.url, timeout=10))
        started = time.monotonic()
        assert serve(app) == [200] * REQUESTS
        # the IOLoop never waited for the collector
        assert time.monotonic() - started < 1.5 * REQUESTS / 8
        assert app.divak_force_flush(30)
        queue = app.divak_span_queues[0]
        assert queue.dropped_spans > 0
        assert queue.dropped_spans + queue.exported_spans == REQUESTS
        assert len(slow.spans) == queue.exported_spans
        app.divak_shutdown()
    warnings = divak_warnings(log_records)
    # one "dropping starts" line and (at shutdown) one summary, not one per span
    assert 1 <= len(warnings) <= 2, [w.getMessage() for w in warnings]
    assert "is full" in warnings[0].getMessage()
    assert not [r for r in log_records if "Queue full" in r.getMessage()]


def test_drop_summary_per_interval_then_recovery(log_records):
    class Slow(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[ReadableSpan] = []

        def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
            time.sleep(0.1)
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    slow = Slow()
    queue = SpanQueue(
        slow, max_queue_size=5, max_batch_size=5, schedule_delay=0.02,
        summary_interval=0.4,
    )
    provider = TracerProvider()
    provider.add_span_processor(queue)
    tracer = provider.get_tracer("test")
    deadline = time.monotonic() + 1.5
    ended = 0
    while time.monotonic() < deadline:  # keep dropping for a few intervals
        tracer.start_span("work").end()
        ended += 1
        time.sleep(0.002)
    assert queue.force_flush(10_000)
    assert queue.dropped_spans + len(slow.spans) == ended
    assert queue.dropped_spans > ended / 2
    time.sleep(1.0)  # more than an interval without drops
    provider.shutdown()
    messages = [
        r.getMessage() for r in log_records if r.name.startswith("divak.reporters")
    ]
    assert sum("is full" in m for m in messages) == 1
    summaries = [m for m in messages if m.startswith("dropped ")]
    # one per interval, not one per span or per batch
    assert 1 <= len(summaries) <= 6, messages
    first = next(m for m in messages if "is full" in m)
    assert any("no longer drops" in m for m in messages)
    assert len(messages) <= 8, (first, messages)


class _Flaky(web.RequestHandler):
    def initialize(self, state: dict[str, typing.Any]) -> None:
        self.state = state

    def post(self) -> None:
        self.state["attempts"] += 1
        if self.state["attempts"] <= 2:
            self.set_status(503)
            return
        self.state["bodies"].append(self.request.body)
        self.set_status(202)


def test_briefly_unavailable_collector_is_retried(log_records):
    state: dict[str, typing.Any] = {"attempts": 0, "bodies": []}
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    reporter = divak.ZipkinReporter(f"http://127.0.0.1:{port}/api/v2", retry_for=10)
    app = App(reporter)

    async def go() -> list[int]:
        server = httpserver.HTTPServer(
            web.Application([(r"/api/v2/spans", _Flaky, {"state": state})])
        )
        server.add_sockets(sockets)
        codes = await _serve_async(app, 10)
        import asyncio

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, app.divak_force_flush, 20.0)
        server.stop()
        return codes

    assert run(go()) == [200] * 10
    assert state["attempts"] == 3
    assert reporter.exported_spans == 10 and reporter.failed_spans == 0
    assert app.divak_dropped_spans == 0
    assert not divak_warnings(log_records)
    app.divak_shutdown()


async def _serve_async(app: App, requests: int) -> list[int]:
    port = listen(app)
    client = httpclient.AsyncHTTPClient()
    responses = await _gather(
        client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
        for _ in range(requests)
    )
    app._test_server.stop()
    return [r.code for r in responses]


def test_uploads_are_not_traced_and_send_b3_0(collector):
    seen: list[object] = []

    class Watching(divak.ZipkinReporter):
        def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
            seen.append(
                otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY)
            )
            return super().export(spans)

    app = App(Watching(collector.url))
    assert serve(app, 10) == [200] * 10
    assert app.divak_force_flush(10)
    assert seen and all(flag is True for flag in seen)
    assert collector.posts
    for headers, _ in collector.posts:
        assert {k.lower(): v for k, v in headers.items()}.get("b3") == "0"
    assert len(collector.spans) == 10
    app.divak_shutdown()


def test_shutdown_with_collector_down_does_not_wait_for_retries():
    reporter = divak.ZipkinReporter(
        f"http://127.0.0.1:{free_port()}/api/v2", retry_for=60
    )
    app = App(reporter)
    assert serve(app, 10) == [200] * 10
    started = time.monotonic()
    app.divak_shutdown()
    assert time.monotonic() - started < 10
    assert reporter.failed_spans == 10


class _OTLPTraces(web.RequestHandler):
    def initialize(self, received: list[bytes]) -> None:
        self.received = received

    def post(self) -> None:
        self.received.append(self.request.body)
        self.set_header("Content-Type", "application/x-protobuf")
        self.write(b"")


def test_otlp_reporter_sends_spans_and_survives_a_dead_collector(log_records):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[bytes] = []
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/v1/traces"
    reporter = divak.OTLPReporter(url)
    assert reporter.endpoint == url
    app = App(reporter)

    async def go() -> list[int]:
        server = httpserver.HTTPServer(
            web.Application([(r"/v1/traces", _OTLPTraces, {"received": received})])
        )
        server.add_sockets(sockets)
        codes = await _serve_async(app, 5)
        import asyncio

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, app.divak_force_flush, 20.0)
        server.stop()
        return codes

    assert run(go()) == [200] * 5
    names = []
    for body in received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                names.extend(span.name for span in scope_spans.spans)
    assert names == ["GET /"] * 5
    assert reporter.exported_spans == 5
    app.divak_shutdown()

    dead = divak.OTLPReporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=2)
    app = App(dead)
    assert serve(app, 10) == [200] * 10
    assert app.divak_force_flush(20)
    assert dead.failed_spans == 10 and app.divak_dropped_spans == 10
    app.divak_shutdown()
    tracebacks = [r for r in log_records if r.exc_info and r.levelno >= logging.ERROR]
    assert not [r for r in tracebacks if r.name.startswith("divak")]


def test_finished_requests_leave_no_reference_cycles(collector):
    # A cycle per request would keep every span alive until the cyclic
    # garbage collector runs: memory and tail latency grow under load.
    import gc

    from divak.tracing import RequestContext

    app = App(divak.ZipkinReporter(collector.url))
    serve(app, 10)  # warm up: routes, tracer, client
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert serve(app, 20) == [200] * 20
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, RequestContext)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []
    app.divak_shutdown()
