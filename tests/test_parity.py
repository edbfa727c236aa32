"""sprockets.http 2.5.1 parity: mix-ins, access log and test case, over real sockets."""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import typing
import unittest
from unittest import mock

from sprockets.mixins.mediatype import content, transcoders
from tornado import httpclient, web

import divak
import divak.app
import divak.mixins
from divak import testing
from tests.conftest import free_port, listen, run

TRACE = "12345678901234567890123456789012"

# -- helpers -----------------------------------------------------------------


def serve(
    app: web.Application, path: str, headers: dict[str, str] | None = None
) -> httpclient.HTTPResponse:
    """One real request to *app* on 127.0.0.1; the app is shut down after it."""

    async def scenario() -> httpclient.HTTPResponse:
        port = listen(app)
        try:
            return await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}{path}", headers=headers, raise_error=False
            )
        finally:
            app._test_server.stop()

    try:
        return run(scenario())
    finally:
        shutdown = getattr(app, "divak_shutdown", None)
        if shutdown is not None:
            shutdown()


def records_of(records: list[logging.LogRecord], name: str) -> list[logging.LogRecord]:
    return [record for record in records if record.name == name]


class Status(divak.ErrorLogger, divak.ErrorWriter, web.RequestHandler):
    """sprockets.http's example StatusHandler: answers the status asked for."""

    def get(self, status_code: str) -> None:
        self.send_error(
            int(status_code),
            reason=self.get_query_argument("reason", None),
            log_message=self.get_query_argument("log_message", None),
        )


class Raising(divak.ErrorLogger, divak.ErrorWriter, web.RequestHandler):
    def get(self, status_code: str) -> None:
        raise web.HTTPError(
            int(status_code), reason=self.get_query_argument("reason", None)
        )


class Traced(divak.Recorder, divak.Application):
    def __init__(self, *args: typing.Any, **settings: typing.Any) -> None:
        super().__init__(*args, **settings)
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())


def routes() -> list[typing.Any]:
    return [
        web.url(r"/status/(?P<status_code>\d+)", Status),
        web.url(r"/fail/(?P<status_code>\d+)", Raising),
    ]


# -- ErrorLogger -------------------------------------------------------------


def test_send_error_log_message_is_logged_not_sent(
    log_records: list[logging.LogRecord],
) -> None:
    for app in (web.Application(routes()), Traced(routes())):
        log_records.clear()
        response = serve(app, "/status/400?log_message=injected%20message")
        assert response.code == 400
        (record,) = [r for r in log_records if "failed with" in r.getMessage()]
        assert record.levelno == logging.WARNING
        assert record.getMessage() == (
            "GET /status/400?log_message=injected%20message"
            " failed with 400: injected message"
        )
        assert b"injected" not in response.body
        assert json.loads(response.body)["message"] == "Bad Request"


class Ported(divak.mixins.ErrorLogger, web.RequestHandler):
    """A handler ported from sprockets.http: ErrorLogger gives self.logger."""

    def get(self) -> None:
        self.logger.info("ported handler says hello")
        self.write("ok")


def test_error_logger_gives_the_handler_a_logger(
    log_records: list[logging.LogRecord],
) -> None:
    for app in (web.Application([("/ported", Ported)]), Traced([("/ported", Ported)])):
        log_records.clear()
        response = serve(app, "/ported")
        assert (response.code, response.body) == (200, b"ok")
        (record,) = [
            r for r in log_records if r.getMessage() == "ported handler says hello"
        ]
        assert record.levelno == logging.INFO
        assert record.name == "tests.test_parity.Ported"


class LegacyBase(web.RequestHandler):
    logger = logging.getLogger("legacy.base")


class PortedWithBaseLogger(divak.mixins.ErrorLogger, LegacyBase):
    def get(self) -> None:
        self.logger.info("base logger kept")
        raise web.HTTPError(409)


def test_a_base_class_logger_is_kept(log_records: list[logging.LogRecord]) -> None:
    response = serve(web.Application([("/p", PortedWithBaseLogger)]), "/p")
    assert response.code == 409
    names = {r.getMessage(): r.name for r in log_records if r.name == "legacy.base"}
    assert names == {
        "base logger kept": "legacy.base",
        "GET /p failed with 409: Conflict": "legacy.base",
    }


# -- ErrorWriter -------------------------------------------------------------


def test_raised_http_error_message_is_str_of_the_exception() -> None:
    response = serve(web.Application(routes()), "/fail/400")
    assert response.code == 400
    document = json.loads(response.body)
    assert document["message"] == str(web.HTTPError(400)) == "HTTP 400: Bad Request"
    assert document["type"] == "HTTPError"
    custom = json.loads(
        serve(web.Application(routes()), "/fail/400?reason=oopsie").body
    )
    assert custom["message"] == "HTTP 400: oopsie"


def test_send_error_message_is_the_reason_phrase() -> None:
    document = json.loads(serve(web.Application(routes()), "/status/500").body)
    assert (document["type"], document["message"]) == (None, "Internal Server Error")
    unknown = json.loads(serve(web.Application(routes()), "/status/567").body)
    assert unknown["message"] == "Unknown"


class Negotiated(content.ContentMixin, Status):
    pass


def test_send_response_gets_exactly_sprockets_three_keys() -> None:
    app = web.Application([web.url(r"/status/(?P<status_code>\d+)", Negotiated)])
    content.set_default_content_type(app, "application/json", encoding="utf-8")
    content.add_transcoder(app, transcoders.JSONTranscoder())
    response = serve(app, "/status/500", headers={"Accept": "application/json"})
    assert response.code == 500
    assert json.loads(response.body) == {
        "type": None,
        "message": "Internal Server Error",
        "traceback": None,
    }


def test_ids_are_in_the_document_when_the_request_has_them() -> None:
    response = serve(Traced(routes()), "/fail/404", headers={"Request-Id": "req-d"})
    document = json.loads(response.body)
    assert document["request_id"] == "req-d"
    assert re.fullmatch(r"[0-9a-f]{32}", document["trace_id"])


# -- access log --------------------------------------------------------------


class Hello(web.RequestHandler):
    """Works in any application (no RequestTracker)."""

    def get(self) -> None:
        if self.get_query_argument("missing", None):
            raise web.HTTPError(404)
        self.write("hello")


class Quiet(Hello):
    access_log_failures_only = True


class Named(Hello):
    def get_current_user(self) -> str:
        return "alice"


def access_records(
    app: web.Application,
    path: str,
    log_records: list[logging.LogRecord],
    headers: dict[str, str] | None = None,
) -> list[logging.LogRecord]:
    log_records.clear()
    serve(app, path, headers)
    return records_of(log_records, "tornado.access")


def make(app_class: type, **settings: typing.Any) -> web.Application:
    return app_class(
        [("/hello", Hello), ("/quiet", Quiet), ("/named", Named)], **settings
    )


def test_default_wording_and_levels(log_records: list[logging.LogRecord]) -> None:
    for app_class in (Traced, divak.app.Application):
        (ok,) = access_records(make(app_class), "/hello", log_records)
        assert ok.levelno == logging.INFO
        assert re.fullmatch(
            r'127\.0\.0\.1 "GET /hello" 200 \d+\.\d\dms', ok.getMessage()
        )
        (missing,) = access_records(make(app_class), "/hello?missing=1", log_records)
        assert missing.levelno == logging.WARNING
        assert " 404 " in missing.getMessage()


def test_failures_only_logs_success_at_debug(
    log_records: list[logging.LogRecord],
) -> None:
    for app_class in (Traced, divak.app.Application):
        (ok,) = access_records(make(app_class), "/quiet", log_records)
        assert ok.levelno == logging.DEBUG
        (missing,) = access_records(make(app_class), "/quiet?missing=1", log_records)
        assert missing.levelno == logging.WARNING


COMBINED = re.compile(
    r'127\.0\.0\.1 - (?P<user>\S+) \[(?P<date>[^\]]+)\] "GET (?P<uri>\S+) HTTP/1\.1"'
    r' (?P<status>\d{3}) "(?P<reason>[^"]*)" - "(?P<referer>[^"]*)" "(?P<ua>[^"]*)"'
    r" \(secs:\d+\.\d{3}\)"
)


def test_combined_format_as_sprockets(log_records: list[logging.LogRecord]) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    for app_class in (Traced, divak.app.Application):
        app = make(app_class, access_log_format="combined")
        (record,) = access_records(
            app,
            "/named?x=1",
            log_records,
            headers={"Referer": "http://example.com/", "User-Agent": "probe/1.0"},
        )
        match = COMBINED.fullmatch(record.getMessage())
        assert match, record.getMessage()
        assert match["user"] == "alice"
        assert match["uri"] == "/named?x=1"
        assert (match["status"], match["reason"]) == ("200", "OK")
        assert (match["referer"], match["ua"]) == ("http://example.com/", "probe/1.0")
        logged = datetime.datetime.strptime(match["date"], "%d/%b/%Y:%H:%M:%S %z")
        assert before <= logged <= datetime.datetime.now(datetime.UTC)
        (anonymous,) = access_records(
            app_class([("/hello", Hello)], access_log_format="combined"),
            "/hello?missing=1",
            log_records,
        )
        match = COMBINED.fullmatch(anonymous.getMessage())
        assert match and match["user"] == "-" and match["reason"] == "Not Found"
        assert (match["referer"], anonymous.levelno) == ("-", logging.WARNING)


def test_ids_are_record_attributes_not_message_text(
    log_records: list[logging.LogRecord],
) -> None:
    for access_log_format in ("divak", "combined"):
        (record,) = access_records(
            make(Traced, access_log_format=access_log_format),
            "/hello",
            log_records,
            headers={
                "Request-Id": "req-a",
                "traceparent": f"00-{TRACE}-1234567890123456-01",
            },
        )
        assert record.divak_request_id == "req-a"
        assert record.otelTraceID == TRACE
        assert "req-a" not in record.getMessage()
        assert TRACE not in record.getMessage()


# -- DivakTestCase -----------------------------------------------------------

APPS: list[typing.Any] = []


class Tracked(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


class Callbacks(divak.Recorder, divak.Application):
    def __init__(self, **settings: typing.Any) -> None:
        super().__init__([("/hello", Tracked)], service="parity", **settings)


def run_case(case: type[unittest.TestCase]) -> unittest.TestResult:
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(case).run(result)
    return result


def test_start_and_stop_are_called_as_sprockets_does() -> None:
    calls: list[tuple[str, tuple[typing.Any, ...]]] = []

    class Case(testing.DivakTestCase):
        shutdown_limit = 0.3
        wait_timeout = 0.02

        def get_app(self) -> web.Application:
            real = Callbacks()
            real.on_shutdown_callbacks.append(lambda app: calls.append(("cb", ())))
            self.app = mock.Mock(wraps=real)
            APPS.append(real)
            return real

        def test_request(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            calls.append(("start", tuple(self.app.start.call_args.args)))
            calls.append(("io_loop", (self.io_loop,)))

        def tearDown(self) -> None:
            super().tearDown()
            calls.append(("stop", tuple(self.app.stop.call_args.args)))

    APPS.clear()
    result = run_case(Case)
    assert result.wasSuccessful(), result.errors + result.failures
    recorded = dict(calls)
    (io_loop,) = recorded["io_loop"]
    assert recorded["start"] == (io_loop,)
    assert recorded["stop"] == (io_loop, 0.3, 0.02)
    assert "cb" in recorded  # the real stop ran the shutdown callbacks


def test_a_fully_mocked_app_still_works() -> None:
    class Case(testing.DivakTestCase):
        shutdown_limit = 0.05

        def get_app(self) -> web.Application:
            self.app = mock.Mock()
            real = Callbacks()
            APPS.append(real)
            return real

        def test_request(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            self.app.start.assert_called_once_with(self.io_loop)

    APPS.clear()
    result = run_case(Case)
    assert result.wasSuccessful(), result.errors + result.failures


def test_every_test_app_is_shut_down() -> None:
    class Case(testing.DivakTestCase):
        def get_app(self) -> web.Application:
            app = Callbacks()
            APPS.append(app)
            return app

        def test_one(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            self.assertEqual(len(self.flush_spans()), 1)

        def test_two(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            self.assertEqual(len(self.flush_spans()), 1)

    APPS.clear()
    result = run_case(Case)
    assert result.wasSuccessful(), result.errors + result.failures
    assert len(APPS) == 2
    queues = [queue for app in APPS for queue in app.divak_span_queues]
    assert queues
    threads = [queue._thread for queue in queues if queue._thread is not None]
    assert threads and not any(thread.is_alive() for thread in threads)
    alive = {thread.name for thread in threading.enumerate()}
    assert not any(thread.name in alive for thread in threads)


def test_production_app_with_an_unreachable_collector() -> None:
    """The README's application shape: a Zipkin reporter nobody listens to."""
    dead = f"http://127.0.0.1:{free_port()}/api/v2"

    class Production(divak.Recorder, divak.Application):
        def __init__(self) -> None:
            super().__init__([("/hello", Hello)])
            self.set_divak_service("items")
            self.add_divak_reporter(divak.ZipkinReporter(dead))
            self.add_divak_propagator(divak.TraceContextPropagation())
            self.add_divak_propagator(divak.RequestIdPropagation())

    class Case(testing.DivakTestCase):
        def get_app(self) -> web.Application:
            return Production()

        def test_spans(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            # Only the in-memory recorder is flushed: waiting on the dead
            # collector's queue too ran into the timeout and failed.
            (span,) = self.flush_spans()
            self.assertEqual(span.name, "GET /hello")

    result = run_case(Case)
    assert result.wasSuccessful(), result.errors + result.failures
