"""The request pipeline: one owner per request, the same result for every handler.

Over real sockets: an exception raised after ``finish()`` marks the
request's span the same way whatever the handler's bases (none of divak's,
:class:`divak.RequestTracker`, or the error mix-ins alone, whose
:class:`~divak.ErrorLogger` drops Tornado's own record of the exception),
while the client still gets its 200, the access line says 200 and the
duration metric carries the same ``error.type``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families
from tornado import httpclient, web, websocket

import divak
from divak.testing import SpanRecorder

from .conftest import flush, listen, run


class LateError(Exception):
    """Raised by the handlers below after their response was sent."""


LATE_ERROR_TYPE = f"{__name__}.LateError"


class RaisesAfterFinish:
    """``GET`` answers 200, waits until the test received it, then raises."""

    #: Set by the test once the client holds the response.
    received: asyncio.Event

    async def get(self) -> None:
        self.finish("done")  # type: ignore[attr-defined]
        await RaisesAfterFinish.received.wait()
        raise LateError("raised after finish()")


class Plain(RaisesAfterFinish, web.RequestHandler):
    """No divak mix-in at all."""


class Tracked(RaisesAfterFinish, divak.RequestTracker, web.RequestHandler):
    """divak's handler mix-in for tracing conveniences."""


class ErrorMixins(
    RaisesAfterFinish, divak.ErrorLogger, divak.ErrorWriter, web.RequestHandler
):
    """The error mix-ins without RequestTracker."""


KINDS = {"/plain": Plain, "/tracked": Tracked, "/errors": ErrorMixins}


class App(divak.Recorder, divak.Application):
    def __init__(self, recorder: SpanRecorder) -> None:
        super().__init__([*KINDS.items(), (r"/metrics", divak.MetricsHandler)])
        self.set_divak_service("pipeline")
        self.add_divak_reporter(recorder)


async def wait_for_span(app: App, recorder: SpanRecorder, name: str) -> ReadableSpan:
    """The span called *name*, once the handler's task ended it."""
    deadline = time.monotonic() + 10
    while not recorder.find(name):
        assert time.monotonic() < deadline, f"no span {name!r} within 10 s"
        await asyncio.sleep(0.01)
        await flush(app)
    return recorder.one(name)


def serve_each_kind() -> tuple[
    SpanRecorder, dict[str, httpclient.HTTPResponse], dict[str, int], str
]:
    """Request every kind once; return spans, responses, receive times, metrics."""
    recorder = SpanRecorder()
    app = App(recorder)
    responses: dict[str, httpclient.HTTPResponse] = {}
    received_at: dict[str, int] = {}

    async def go() -> str:
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            for path in KINDS:
                RaisesAfterFinish.received = asyncio.Event()
                responses[path] = await client.fetch(
                    f"http://127.0.0.1:{port}{path}", raise_error=False
                )
                received_at[path] = time.time_ns()
                RaisesAfterFinish.received.set()
                await wait_for_span(app, recorder, f"GET {path}")
            scrape = await client.fetch(f"http://127.0.0.1:{port}/metrics")
        finally:
            client.close()
            app._test_server.stop()
        return scrape.body.decode()

    metrics_text = run(go())
    return recorder, responses, received_at, metrics_text


def outcome(span: ReadableSpan) -> tuple[typing.Any, ...]:
    """What a user sees of the span: status, error type, status code, exceptions."""
    attributes = span.attributes or {}
    return (
        span.status.status_code,
        attributes.get("error.type"),
        attributes.get("http.response.status_code"),
        [
            (event.attributes or {}).get("exception.type")
            for event in span.events
            if event.name == "exception"
        ],
    )


def test_an_exception_after_finish_marks_the_span_whatever_the_handler(
    log_records: list[logging.LogRecord],
) -> None:
    recorder, responses, received_at, metrics_text = serve_each_kind()

    for path, response in responses.items():
        assert (response.code, response.body) == (200, b"done"), path

    outcomes = {path: outcome(recorder.one(f"GET {path}")) for path in KINDS}
    expected = (StatusCode.ERROR, LATE_ERROR_TYPE, 200, [LATE_ERROR_TYPE])
    assert outcomes == dict.fromkeys(KINDS, expected)

    for path in KINDS:
        span = recorder.one(f"GET {path}")
        # Ended with the time of the response, not when the task raised.
        assert span.end_time is not None
        assert span.end_time <= received_at[path], path

    access_lines = [r for r in log_records if r.name == "tornado.access"]
    for path in KINDS:
        [line] = [r for r in access_lines if f'"GET {path}"' in r.getMessage()]
        assert line.levelno == logging.INFO
        assert getattr(line, "http.response.status_code") == 200

    durations = {
        sample.labels["http_route"]: (
            sample.labels["http_response_status_code"],
            sample.labels.get("error_type"),
            sample.value,
        )
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "http_server_request_duration_seconds_count"
        and sample.labels.get("http_route") in KINDS
    }
    assert durations == dict.fromkeys(KINDS, ("200", LATE_ERROR_TYPE, 1.0))


@pytest.mark.parametrize("path", list(KINDS))
def test_the_exception_is_logged_once(
    path: str, log_records: list[logging.LogRecord]
) -> None:
    # The pipeline listens to Tornado's record; it neither drops it nor
    # adds one: the exception is logged once, as without divak.
    recorder = SpanRecorder()
    app = App(recorder)

    async def go() -> None:
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            RaisesAfterFinish.received = asyncio.Event()
            await client.fetch(f"http://127.0.0.1:{port}{path}")
            RaisesAfterFinish.received.set()
            await wait_for_span(app, recorder, f"GET {path}")
        finally:
            client.close()
            app._test_server.stop()

    run(go())
    logged = [
        r
        for r in log_records
        if r.exc_info
        and isinstance(r.exc_info[1], LateError)
        and r.levelno >= logging.ERROR
    ]
    assert len(logged) == 1, [(r.name, r.getMessage()) for r in logged]


class Echo(websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


def test_a_websocket_upgrade_keeps_its_span_until_the_connection_closes() -> None:
    # The handler's task lasts as long as the WebSocket, and so does the
    # span (tests/test_websocket.py covers the connection in detail).
    recorder = SpanRecorder()

    class WebSocketApp(divak.Recorder, divak.Application):
        pass

    app = WebSocketApp([(r"/ws", Echo)])
    app.add_divak_reporter(recorder)

    async def go() -> None:
        port = listen(app)
        connection = await websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
        try:
            await connection.write_message("ping")
            assert await connection.read_message() == "ping"
            await flush(app)
            assert not recorder.find("GET /ws")
        finally:
            connection.close(1000)
        await wait_for_span(app, recorder, "GET /ws")
        app._test_server.stop()

    run(go())
    span = recorder.one("GET /ws")
    assert (span.attributes or {})["http.response.status_code"] == 101
    assert (span.attributes or {})["divak.websocket.close_code"] == 1000
    assert span.status.status_code is StatusCode.UNSET


def test_a_handler_streaming_the_body_runs_in_the_request_context() -> None:
    """prepare, data_received and the method of a streaming handler all
    see the request's SERVER span as the current span."""
    from opentelemetry import trace

    seen: list[tuple[str, int]] = []

    def current() -> int:
        return trace.get_current_span().get_span_context().span_id

    @web.stream_request_body
    class Upload(web.RequestHandler):
        def prepare(self) -> None:
            seen.append(("prepare", current()))

        def data_received(self, chunk: bytes) -> None:
            seen.append(("data", current()))

        def put(self) -> None:
            seen.append(("put", current()))
            self.write("stored")

    recorder = SpanRecorder()

    async def scenario() -> bytes:
        app = divak.Recorder([(r"/upload", Upload)])
        app.add_divak_reporter(recorder)
        port = listen(app)
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/upload", method="PUT", body=b"x" * 200_000
        )
        await flush(app)
        return response.body

    assert run(scenario()) == b"stored"
    (span,) = recorder.named("PUT /upload")
    steps = [step for step, _ in seen]
    assert steps[0] == "prepare" and steps[-1] == "put" and "data" in steps
    assert {span_id for _, span_id in seen} == {span.context.span_id}
