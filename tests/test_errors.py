"""ErrorLogger, ErrorWriter and the server span of an error, over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import typing

import pytest
import yaml
from sprockets.mixins.mediatype import content, transcoders
from tornado import httpclient, httputil, web

import divak
from divak.logs import RequestLogger
from divak.testing import ZipkinCollector
from tests.conftest import flush, listen, run
from tests.zipkin_schema import validate_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Failing:
    """Handler body shared by every handler class under test.

    ``GET /crash`` raises a ValueError, ``GET /http?status=...`` raises an
    HTTPError, ``GET /send?status=...`` calls ``send_error``; ``POST`` is
    allowed, ``DELETE`` is not (405 before ``prepare``).
    """

    async def get(self, what: str) -> None:
        status = int(self.get_argument("status", "500"))
        reason = self.get_argument("reason", None)
        if what == "crash":
            raise ValueError("secret crash detail")
        if what == "http":
            log_message = self.get_argument("log", None)
            if log_message is None:
                raise web.HTTPError(status, reason=reason)
            raise web.HTTPError(status, "%s and %s", log_message, "more", reason=reason)
        if what == "send":
            self.send_error(status, reason=reason)
            return
        if what == "flushed":
            self.write("partial ")
            await self.flush()
            raise ValueError("too late")
        self.write({"ok": True})

    def post(self, what: str) -> None:
        self.write({"ok": True})


class Handler(
    divak.RequestTracker,
    divak.Logger,
    divak.HttpClientMixin,
    divak.ErrorLogger,
    divak.ErrorWriter,
    Failing,
    web.RequestHandler,
):
    """The project's intended handler bases."""


class WriterFirst(
    divak.RequestTracker,
    divak.ErrorWriter,
    divak.ErrorLogger,
    Failing,
    web.RequestHandler,
):
    pass


class LoggerBeforeTracker(
    divak.ErrorLogger,
    divak.ErrorWriter,
    divak.RequestTracker,
    Failing,
    web.RequestHandler,
):
    pass


class WithContentMixin(
    divak.RequestTracker,
    divak.ErrorLogger,
    divak.ErrorWriter,
    content.ContentMixin,
    Failing,
    web.RequestHandler,
):
    pass


class WithLoggingHandler(
    divak.RequestTracker,
    divak.LoggingHandler,
    divak.ErrorLogger,
    divak.ErrorWriter,
    Failing,
    web.RequestHandler,
):
    logger = logging.getLogger("tests.own-logger")


class Untracked(divak.ErrorLogger, divak.ErrorWriter, Failing, web.RequestHandler):
    pass


class Slow(
    divak.RequestTracker, divak.ErrorLogger, divak.ErrorWriter, web.RequestHandler
):
    started: asyncio.Event
    release: asyncio.Event

    async def get(self) -> None:
        Slow.started.set()
        await Slow.release.wait()
        self.write("late")


@pytest.fixture(autouse=True)
def no_default_reporter(monkeypatch):
    """Spans of apps without a collector go nowhere, so the log records a
    test counts never include a span logged late by an earlier test's app."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")


class App(divak.Recorder, divak.Application):
    def __init__(
        self,
        handler: type = Handler,
        collector: typing.Any = None,
        **settings: typing.Any,
    ) -> None:
        super().__init__(
            [(r"/slow", Slow), (r"/(?P<what>[a-z]+)", handler)], **settings
        )
        self.set_divak_service("errors")
        if collector is not None:
            self.add_divak_reporter(divak.ZipkinReporter(collector.url))
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())


async def fetch(
    port: int, path: str, method: str = "GET", **kwargs: typing.Any
) -> httpclient.HTTPResponse:
    client = httpclient.AsyncHTTPClient()
    body = "" if method == "POST" else None
    return await client.fetch(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        body=body,
        raise_error=False,
        **kwargs,
    )


def serve(
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    collector: typing.Any = None,
    **app_kwargs: typing.Any,
) -> httpclient.HTTPResponse:
    """Answer one request on a fresh application; flush its spans."""

    async def go() -> httpclient.HTTPResponse:
        app = App(collector=collector, **app_kwargs)
        port = listen(app)
        try:
            response = await fetch(port, path, method, headers=headers or {})
        finally:
            app._test_server.stop()
        if collector is not None:
            await flush(app)
        return response

    return run(go())


def error_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """Every INFO+ record but the access log line."""
    return [
        r for r in records if r.name != "tornado.access" and r.levelno >= logging.INFO
    ]


def only_error_record(records: list[logging.LogRecord]) -> logging.LogRecord:
    found = error_records(records)
    assert len(found) == 1, [(r.name, r.getMessage()) for r in found]
    return found[0]


# -- ErrorLogger -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "level", "message"),
    [
        ("/http?status=400", 400, logging.WARNING, "Bad Request"),
        ("/http?status=404", 404, logging.WARNING, "Not Found"),
        ("/send?status=429", 429, logging.WARNING, "Too Many Requests"),
        ("/http?status=500", 500, logging.ERROR, "Internal Server Error"),
        ("/send?status=503", 503, logging.ERROR, "Service Unavailable"),
        ("/http?status=590", 590, logging.ERROR, "Unknown"),
        ("/send?status=399", 399, logging.ERROR, "Unknown"),
        ("/crash", 500, logging.ERROR, "Internal Server Error"),
    ],
)
def test_one_record_per_error_with_level_by_status(
    log_records: list[logging.LogRecord],
    path: str,
    status: int,
    level: int,
    message: str,
) -> None:
    response = serve(path)
    assert response.code == status
    record = only_error_record(log_records)
    assert record.levelno == level
    assert record.getMessage() == f"GET {path} failed with {status}: {message}"
    assert record.name == f"{__name__}.Handler"


def test_unexpected_exception_is_logged_with_its_traceback(
    log_records: list[logging.LogRecord],
) -> None:
    response = serve("/crash")
    assert response.code == 500
    record = only_error_record(log_records)
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert "secret crash detail" in logging.Formatter().format(record)
    # Tornado's own "Uncaught exception" record is not written.
    assert not [r for r in log_records if r.name == "tornado.application"]


def test_http_error_has_no_traceback_and_logs_its_log_message(
    log_records: list[logging.LogRecord],
) -> None:
    response = serve("/http?status=409&log=secret+detail")
    assert response.code == 409
    record = only_error_record(log_records)
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert record.getMessage().endswith("failed with 409: secret detail and more")
    assert b"secret" not in response.body
    assert not [r for r in log_records if r.name == "tornado.general"]


def test_custom_reason_reaches_log_status_line_and_document(
    log_records: list[logging.LogRecord],
) -> None:
    # An HTTPError's document says str(exc), as sprockets.http's does.
    for path, message in (
        ("/http?status=418&reason=Short+and+stout", "HTTP 418: Short and stout"),
        ("/send?status=418&reason=Short+and+stout", "Short and stout"),
    ):
        log_records.clear()
        response = serve(path)
        assert (response.code, response.reason) == (418, "Short and stout")
        assert json.loads(response.body)["message"] == message
        record = only_error_record(log_records)
        assert record.getMessage().endswith("failed with 418: Short and stout")


def test_log_message_wins_over_custom_reason_in_the_log(
    log_records: list[logging.LogRecord],
) -> None:
    response = serve("/http?status=422&reason=Bad+Item&log=item+12+is+missing")
    assert (response.code, response.reason) == (422, "Bad Item")
    document = json.loads(response.body)
    assert document["message"] == "HTTP 422: Bad Item"
    assert "item 12" not in response.body.decode()
    record = only_error_record(log_records)
    assert record.getMessage().endswith("failed with 422: item 12 is missing and more")


# -- the ids -----------------------------------------------------------------


def assert_same_ids(
    response: httpclient.HTTPResponse,
    record: logging.LogRecord,
    span: dict[str, typing.Any],
) -> None:
    document = json.loads(response.body)
    request_id = response.headers["Request-Id"]
    assert request_id
    assert document["request_id"] == record.divak_request_id == request_id
    assert document["trace_id"] == record.otelTraceID == span["traceId"]
    assert record.otelSpanID == span["id"]
    assert span["tags"]["divak.request_id"] == request_id


@pytest.mark.parametrize("handler", [Handler, WriterFirst, LoggerBeforeTracker])
@pytest.mark.parametrize(
    ("method", "path", "status", "settings"),
    [
        ("GET", "/crash", 500, {}),
        ("GET", "/http?status=404", 404, {}),
        ("DELETE", "/crash", 405, {}),  # raised before prepare
        ("POST", "/crash", 403, {"xsrf_cookies": True}),  # raised before prepare
    ],
)
def test_record_document_header_and_span_share_the_ids(
    collector: divak.testing.ZipkinCollector,
    log_records: list[logging.LogRecord],
    handler: type,
    method: str,
    path: str,
    status: int,
    settings: dict[str, typing.Any],
) -> None:
    response = serve(
        path,
        method,
        {"traceparent": TRACEPARENT, "Request-Id": "req-42"},
        collector=collector,
        handler=handler,
        **settings,
    )
    assert response.code == status
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Request-Id"] == "req-42"
    record = only_error_record(log_records)
    spans = collector.wait_for(lambda spans: len(spans) >= 1)
    validate_spans(spans)
    (span,) = spans
    assert span["traceId"] == TRACE_ID
    assert span["tags"]["http.response.status_code"] == str(status)
    assert_same_ids(response, record, span)


def test_generated_request_id_is_the_same_everywhere(
    collector: divak.testing.ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    response = serve("/http?status=400", collector=collector)
    record = only_error_record(log_records)
    (span,) = collector.wait_for(lambda spans: len(spans) >= 1)
    assert_same_ids(response, record, span)
    assert len(response.headers["Request-Id"]) >= 32


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (["first-id", "second-id"], "first-id"),
        (["not valid", "second-id"], "second-id"),
        (["", "x" * 200, "third-id"], "third-id"),
    ],
)
def test_request_id_sent_twice_is_its_first_valid_value(
    collector: divak.testing.ZipkinCollector,
    log_records: list[logging.LogRecord],
    sent: list[str],
    expected: str,
) -> None:
    """Issue 20, item 11: Tornado combines repeated headers with commas;
    the id is the first valid one, never ``a,b``."""
    headers = httputil.HTTPHeaders()
    for value in sent:
        headers.add("Request-Id", value)
    response = serve("/http?status=404", headers=headers, collector=collector)
    assert response.headers.get_list("Request-Id") == [expected]
    record = only_error_record(log_records)
    (span,) = collector.wait_for(lambda spans: len(spans) >= 1)
    assert_same_ids(response, record, span)


# -- ErrorWriter -------------------------------------------------------------


def test_document_for_an_unexpected_exception_hides_the_exception_text() -> None:
    response = serve("/crash")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    document = json.loads(response.body)
    assert set(document) == {"type", "message", "traceback", "trace_id", "request_id"}
    assert document["type"] == "ValueError"
    assert document["message"] == "Internal Server Error"
    assert document["traceback"] is None
    assert b"secret" not in response.body


def test_document_for_send_error_has_no_type() -> None:
    document = json.loads(serve("/send?status=409").body)
    assert document["type"] is None
    assert document["message"] == "Conflict"
    assert document["traceback"] is None


def test_document_for_http_error() -> None:
    response = serve("/http?status=404&log=secret")
    document = json.loads(response.body)
    assert (document["type"], document["message"]) == (
        "HTTPError",
        "HTTP 404: Not Found",
    )
    assert b"secret" not in response.body


def test_serve_traceback_puts_the_traceback_in_the_document() -> None:
    document = json.loads(serve("/crash", serve_traceback=True).body)
    assert isinstance(document["traceback"], list)
    assert document["traceback"][0].startswith("Traceback")
    assert document["traceback"][-1] == "ValueError: secret crash detail\n"
    http_document = json.loads(serve("/http?status=404", serve_traceback=True).body)
    assert http_document["traceback"][-1].startswith("tornado.web.HTTPError: HTTP 404")


def test_problem_details_setting(log_records: list[logging.LogRecord]) -> None:
    response = serve(
        "/http?status=404&reason=No+Such+Thing&log=secret",
        headers={"Request-Id": "req-7", "traceparent": TRACEPARENT},
        problem_details=True,
    )
    assert response.code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.body)
    assert problem == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "No Such Thing",
        "instance": "/http",
        "trace_id": TRACE_ID,
        "request_id": "req-7",
    }
    assert b"secret" not in response.body
    record = only_error_record(log_records)
    assert record.otelTraceID == TRACE_ID
    crash = json.loads(serve("/crash", problem_details=True, serve_traceback=True).body)
    assert crash["status"] == 500
    assert crash["traceback"][-1] == "ValueError: secret crash detail\n"


class ContentApp(App):
    def __init__(self, **settings: typing.Any) -> None:
        super().__init__(handler=WithContentMixin, **settings)
        content.set_default_content_type(self, "application/json", encoding="utf-8")
        content.add_transcoder(self, transcoders.JSONTranscoder())
        content.add_text_content_type(
            self, "application/yaml", "utf-8", yaml.safe_dump, yaml.safe_load
        )


@pytest.mark.parametrize(
    ("accept", "loads"),
    [("application/yaml", yaml.safe_load), ("application/json", json.loads)],
)
def test_content_mixin_picks_the_format_from_accept(
    log_records: list[logging.LogRecord],
    accept: str,
    loads: typing.Callable[[bytes], typing.Any],
) -> None:
    async def go() -> httpclient.HTTPResponse:
        app = ContentApp()
        port = listen(app)
        try:
            return await fetch(
                port,
                "/http?status=400&log=secret",
                headers={"Accept": accept, "Request-Id": "req-9"},
            )
        finally:
            app._test_server.stop()

    response = run(go())
    assert response.code == 400
    assert response.headers["Content-Type"].partition(";")[0] == accept
    assert response.headers["Vary"] == "Accept"
    document = loads(response.body)
    assert document["message"] == "HTTP 400: Bad Request"
    assert document["request_id"] == "req-9"
    assert document["type"] == "HTTPError"
    assert b"secret" not in response.body
    record = only_error_record(log_records)
    assert record.divak_request_id == "req-9"
    assert document["trace_id"] == record.otelTraceID


def test_without_request_tracker_the_ids_still_flow(
    log_records: list[logging.LogRecord],
) -> None:
    """A Recorder application starts the span for the error mix-ins."""
    with ZipkinCollector() as collector:
        response = serve(
            "/http?status=400",
            headers={"Request-Id": "req-3"},
            handler=Untracked,
            collector=collector,
        )
        (span,) = collector.wait_for(lambda spans: len(spans) >= 1)
    document = json.loads(response.body)
    assert document["request_id"] == "req-3"
    assert document["trace_id"] == span["traceId"]
    assert span["tags"]["http.response.status_code"] == "400"
    record = only_error_record(log_records)
    assert record.divak_request_id == "req-3"
    assert record.otelTraceID == span["traceId"]


def test_plain_tornado_application() -> None:
    async def go() -> httpclient.HTTPResponse:
        app = web.Application([(r"/(?P<what>[a-z]+)", Untracked)])
        port = listen(app)
        try:
            return await fetch(port, "/crash")
        finally:
            app._test_server.stop()

    response = run(go())
    assert response.code == 500
    document = json.loads(response.body)
    # No trace, no correlation id: exactly sprockets.http's three keys.
    assert set(document) == {"type", "message", "traceback"}


# -- LoggingHandler ----------------------------------------------------------


def test_logging_handler_wraps_the_class_logger(
    log_records: list[logging.LogRecord],
) -> None:
    response = serve(
        "/crash",
        "DELETE",
        {"Request-Id": "req-5", "traceparent": TRACEPARENT},
        handler=WithLoggingHandler,
    )
    assert response.code == 405
    record = only_error_record(log_records)
    assert record.name == "tests.own-logger"
    assert (record.otelTraceID, record.divak_request_id) == (TRACE_ID, "req-5")

    seen: list[typing.Any] = []

    class Probe(WithLoggingHandler):
        def get(self, what: str) -> None:
            seen.append(self.logger)
            self.write("ok")

    serve("/probe", handler=Probe)
    assert isinstance(seen[0], RequestLogger)
    assert seen[0].logger is WithLoggingHandler.logger


# -- spans -------------------------------------------------------------------


def annotations(span: dict[str, typing.Any]) -> list[dict[str, typing.Any]]:
    return [json.loads(a["value"]) for a in span.get("annotations", [])]


def test_unexpected_exception_marks_the_span(
    collector: divak.testing.ZipkinCollector,
) -> None:
    serve("/crash", collector=collector)
    (span,) = collector.wait_for(lambda spans: len(spans) >= 1)
    validate_spans([span])
    assert span["tags"]["error.type"] == "ValueError"
    assert span["tags"]["otel.status_code"] == "ERROR"
    assert span["tags"]["http.response.status_code"] == "500"
    (event,) = [a["exception"] for a in annotations(span) if "exception" in a]
    assert event["exception.type"] == "ValueError"
    assert event["exception.message"] == "secret crash detail"
    assert "Traceback" in event["exception.stacktrace"]


@pytest.mark.parametrize(("status", "error"), [(503, True), (404, False), (590, True)])
def test_http_error_keeps_its_status_on_the_span(
    collector: divak.testing.ZipkinCollector, status: int, error: bool
) -> None:
    response = serve(f"/http?status={status}", collector=collector)
    assert response.code == status
    (span,) = collector.wait_for(lambda spans: len(spans) >= 1)
    validate_spans([span])
    assert span["tags"]["http.response.status_code"] == str(status)
    assert not [a for a in annotations(span) if "exception" in a]
    if error:
        assert span["tags"]["error.type"] == str(status)
        assert span["tags"]["otel.status_code"] == "ERROR"
    else:
        assert "error.type" not in span["tags"]
        assert "otel.status_code" not in span["tags"]


def test_client_disconnect_ends_the_span(
    collector: divak.testing.ZipkinCollector, log_records: list[logging.LogRecord]
) -> None:
    async def go() -> None:
        Slow.started = asyncio.Event()
        Slow.release = asyncio.Event()
        app = App(collector=collector)
        port = listen(app)
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        await loop.sock_sendall(
            sock,
            b"GET /slow HTTP/1.1\r\nHost: x\r\n"
            + f"traceparent: {TRACEPARENT}\r\n\r\n".encode(),
        )
        await asyncio.wait_for(Slow.started.wait(), 10)
        sock.close()
        # The span is ended, and exported, while the handler still waits.
        deadline = loop.time() + 15
        while not collector.trace(TRACE_ID):
            assert loop.time() < deadline, "the span was not ended"
            await flush(app)
            await asyncio.sleep(0.01)
        assert not Slow.release.is_set()
        Slow.release.set()
        await asyncio.sleep(0.05)
        await flush(app)
        app._test_server.stop()

    run(go())
    spans = collector.trace(TRACE_ID)
    validate_spans(spans)
    (span,) = spans
    assert span["tags"]["error.type"] == "client_disconnected"
    assert span["tags"]["otel.status_code"] == "ERROR"
    assert "http.response.status_code" not in span["tags"]
    # The handler finishing later does not end the span a second time.
    assert not [r for r in log_records if "ended span" in r.getMessage()]


def test_error_after_the_headers_were_sent_is_logged_once(
    log_records: list[logging.LogRecord],
) -> None:
    with ZipkinCollector() as collector:
        response = serve("/flushed", collector=collector)
        spans = collector.wait_for(lambda spans: len(spans) >= 1)
    assert response.code == 200
    assert response.body == b"partial "
    record = only_error_record(log_records)
    # The client got the 200 sent before the error, not a 500 (issue 20,
    # item 11): the line says what was sent.
    assert record.getMessage() == (
        "GET /flushed failed after sending 200: Internal Server Error"
    )
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    # The client saw a 200, but the server failed: the span says so.
    (span,) = spans
    assert span["tags"]["otel.status_code"] == "ERROR"
    assert span["tags"]["error.type"] == "ValueError"
