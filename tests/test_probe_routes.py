"""Probes (readiness, scrapes, the debug page) are not traced by default.

They are still counted in the request metrics and written to the access
log; ``settings['divak_trace_probes']`` traces them again.  What makes a
handler a probe is its type (:class:`divak.context.Probe`), not its URL.
"""

from __future__ import annotations

import logging
import typing

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado import httpclient, web

import divak
from divak.context import Probe
from divak.testing import SpanRecorder

from .conftest import flush, listen, run


class Hello(web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


class Health(Probe, web.RequestHandler):
    """A health check of the application's own, marked as a probe."""

    def get(self) -> None:
        self.write("ok")


class App(divak.Recorder, divak.Application):
    def __init__(self, recorder: SpanRecorder, **settings: typing.Any) -> None:
        super().__init__(
            [
                (r"/hello", Hello),
                (r"/status", divak.StatusHandler),
                (r"/metrics", divak.MetricsHandler),
                (r"/health", Health),
            ],
            **settings,
        )
        self.set_divak_service("probes")
        self.add_divak_reporter(recorder)
        self.set_divak_debug_page("/divak")
        self.ready_to_serve.set()  # no runner here: /status answers 200


PATHS = ["/hello", "/status", "/metrics", "/health", "/divak?format=json"]


def serve(**settings: typing.Any) -> tuple[SpanRecorder, dict[str, int]]:
    """Request every path once, then scrape; the spans and the request counts."""
    recorder = SpanRecorder()

    async def scenario() -> dict[str, int]:
        app = App(recorder, **settings)
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            for path in PATHS:
                response = await client.fetch(f"http://127.0.0.1:{port}{path}")
                assert response.code == 200, path
            scrape = await client.fetch(f"http://127.0.0.1:{port}/metrics")
        finally:
            client.close()
        await flush(app)
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(scrape.body.decode()):
            for sample in family.samples:
                if sample.name == "http_server_request_duration_seconds_count":
                    route = sample.labels["http_route"]
                    counts[route] = counts.get(route, 0) + int(sample.value)
        return counts

    return recorder, run(scenario())


def test_probes_are_not_traced_but_are_counted_and_logged(
    log_records: list[logging.LogRecord],
) -> None:
    recorder, counts = serve()
    assert [span.name for span in recorder.spans] == ["GET /hello"]
    # Every request, probes included, is in the metrics (the scrape that
    # produced them was not finished yet when they were collected).
    assert counts == {
        "/hello": 1,
        "/status": 1,
        "/metrics": 1,
        "/health": 1,
        "/divak": 1,
    }
    access = [r.getMessage() for r in log_records if r.name == "tornado.access"]
    for path in ["/hello", "/status", "/metrics", "/health", "/divak"]:
        assert any(f'"GET {path}' in line for line in access), (path, access)


@pytest.mark.parametrize("value", [True, "true"])
def test_trace_probes_setting_traces_them(value: typing.Any) -> None:
    recorder, _ = serve(divak_trace_probes=value)
    assert sorted(span.name for span in recorder.spans) == [
        "GET /divak",
        "GET /health",
        "GET /hello",
        "GET /metrics",
        "GET /metrics",  # the scrape that read the counts
        "GET /status",
    ]


def test_a_probe_keeps_the_upstream_trace_in_its_log_records(
    log_records: list[logging.LogRecord],
) -> None:
    recorder = SpanRecorder()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def scenario() -> None:
        app = App(recorder)
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            await client.fetch(
                f"http://127.0.0.1:{port}/status", headers={"traceparent": traceparent}
            )
        finally:
            client.close()
        await flush(app)

    run(scenario())
    assert recorder.spans == []
    (line,) = [r for r in log_records if r.name == "tornado.access"]
    assert line.otelTraceID == "0af7651916cd43dd8448eb211c80319c"


def test_an_invalid_trace_probes_setting_fails_at_once() -> None:
    with pytest.raises(ValueError, match="divak_trace_probes"):
        App(SpanRecorder(), divak_trace_probes="sometimes")
