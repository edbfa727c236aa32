"""divak.testing: DivakTestCase, SpanRecorder, RecordingLogHandler."""

from __future__ import annotations

import asyncio
import logging
import threading
import typing
import unittest

import pytest
from opentelemetry.trace import SpanKind
from tornado import web

import divak
from divak import testing

EVENTS: list[str] = []


class Greeting(divak.RequestTracker, divak.Logger, web.RequestHandler):
    async def get(self) -> None:
        with self.record_operation("load"):
            await asyncio.sleep(0)
        self.logger.info("greeted")
        self.write({"greeting": "hello"})


class Application(divak.Recorder, divak.Application):
    def __init__(self) -> None:
        super().__init__(
            [(r"/greeting", Greeting), (r"/status", divak.StatusHandler)],
            service="greeter",
        )
        self.before_run_callbacks.append(lambda app, loop: EVENTS.append("before_run"))
        self.on_start_callbacks.append(self.started)
        self.on_shutdown_callbacks.append(self.stopping)

    async def started(self, app: web.Application, io_loop: typing.Any) -> None:
        EVENTS.append("on_start")

    async def stopping(self, app: web.Application) -> None:
        EVENTS.append("shutdown")
        await asyncio.Event().wait()  # never finishes: cut at shutdown_limit


class GreetingTest(testing.DivakTestCase):
    shutdown_limit = 0.1

    def get_app(self) -> web.Application:
        return Application()

    def test_callbacks_ran_and_ready(self) -> None:
        self.assertEqual(EVENTS[-2:], ["before_run", "on_start"])
        self.assertEqual(self.fetch("/status").code, 200)

    def test_spans_are_recorded_in_memory(self) -> None:
        handler = testing.RecordingLogHandler()
        root = logging.getLogger()
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            response = self.fetch("/greeting")
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        self.assertEqual(response.code, 200)
        self.flush_spans()
        server = self.spans.one("GET /greeting", kind=SpanKind.SERVER)
        load = self.spans.one("load")
        self.assertEqual(self.spans.children(server), [load])
        trace_id = f"{server.context.trace_id:032x}"
        self.assertEqual(len(self.spans.in_trace(trace_id)), 2)
        self.assertEqual(
            self.spans.find(attributes={"http.route": "/greeting"}), [server]
        )
        greeted = [r for r in handler.records if r.getMessage() == "greeted"]
        self.assertEqual([r.otelTraceID for r in greeted], [trace_id])


class SprocketsStyleTest(testing.SprocketsHttpTestCase):
    """sprockets.http's style: get_app sets ``self.app``."""

    def get_app(self) -> web.Application:
        self.app = Application()
        return self.app

    def test_app_is_the_served_application(self) -> None:
        self.assertIs(self.app, self._app)
        self.assertEqual(self.fetch("/status").code, 200)


def test_shutdown_callbacks_run_after_each_test() -> None:
    EVENTS.clear()
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(GreetingTest).run(result)
    assert result.wasSuccessful(), result.errors + result.failures
    assert EVENTS == ["before_run", "on_start", "shutdown"] * 2


def test_alias() -> None:
    assert testing.SprocketsHttpTestCase is testing.DivakTestCase


def test_span_recorder_wait_for_spans_from_another_thread() -> None:
    recorder = testing.SpanRecorder()
    with pytest.raises(TimeoutError):
        recorder.wait_for(lambda spans: bool(spans), timeout=0.01)

    class Plain(divak.Recorder, web.Application):
        pass

    app = Plain([])
    app.add_divak_reporter(recorder)

    def work() -> None:
        with app.divak_tracer.start_as_current_span("job"):
            pass
        app.divak_force_flush()

    threading.Thread(target=work).start()
    spans = recorder.wait_for(lambda spans: len(spans) == 1)
    assert spans[0].name == "job"
    with pytest.raises(AssertionError, match="found 0"):
        recorder.one("missing")
    recorder.clear()
    assert recorder.spans == []
    app.divak_shutdown()


# -- the test's spans stay in the test ----------------------------------------


class Hello(web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


def production_app(collector_url: str, *, start_tracing: bool = False) -> typing.Any:
    """An application written for production: it reports to a Zipkin collector."""
    app = divak_app([(r"/hello", Hello)])
    app.add_divak_reporter(divak.ZipkinReporter(collector_url))
    if start_tracing:
        assert app.divak_tracer_provider is not None  # tracing starts in get_app
    return app


def divak_app(routes: list[typing.Any]) -> typing.Any:
    class App(divak.Recorder, divak.Application):
        pass

    return App(routes, service="production")


def run_case(case: type[unittest.TestCase]) -> None:
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(case).run(result)
    assert result.wasSuccessful(), result.errors + result.failures


@pytest.mark.parametrize("start_tracing", [False, True])
def test_spans_never_reach_the_applications_production_reporters(
    collector: testing.ZipkinCollector, start_tracing: bool
) -> None:
    class Case(testing.DivakTestCase):
        def get_app(self) -> web.Application:
            return production_app(collector.url, start_tracing=start_tracing)

        def test_request(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            (span,) = self.flush_spans()
            self.assertEqual(span.name, "GET /hello")

    run_case(Case)
    # The application was shut down (its queues flushed) after the test:
    # whatever its reporter was to send, it has sent.
    assert collector.spans == []


def test_keep_reporters_sends_them_there_too(
    collector: testing.ZipkinCollector,
) -> None:
    class Case(testing.DivakTestCase):
        keep_reporters = True

        def get_app(self) -> web.Application:
            return production_app(collector.url)

        def test_request(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            self.assertEqual(len(self.flush_spans()), 1)

    run_case(Case)
    assert [span["name"] for span in collector.wait_for(bool)] == ["GET /hello"]


def test_an_in_memory_reporter_of_the_application_is_kept() -> None:
    own = testing.SpanRecorder()

    class Case(testing.DivakTestCase):
        def get_app(self) -> web.Application:
            app = divak_app([(r"/hello", Hello)])
            app.add_divak_reporter(own)
            return app

        def test_request(self) -> None:
            self.assertEqual(self.fetch("/hello").code, 200)
            self.assertEqual(len(self.flush_spans()), 1)

    run_case(Case)
    assert [span.name for span in own.spans] == ["GET /hello"]
