"""A dead OTLP collector: failures counted, logged rate-limited (issue 20, item 12).

The OTLP exporter answers a failed batch with FAILURE (it never raises)
and logs its own lines for every attempt; the reporter keeps them out of
the log and says it once, as the Zipkin reporter does.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from tornado import httpclient, web

import divak
from tests.conftest import free_port, listen, run

REQUESTS = 60


class Handler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


class App(divak.Recorder, divak.Application):
    def __init__(self, reporter: divak.OTLPReporter) -> None:
        super().__init__([(r"/", Handler)])
        self.set_divak_service("otlp-dead")
        self.add_divak_reporter(reporter)


def test_a_dead_otlp_collector_logs_a_line_or_two_and_counts_every_span(
    log_records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")  # many batches
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    app = App(divak.OTLPReporter(url, timeout=0.5))

    async def go() -> list[int]:
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        codes = []
        for _ in range(REQUESTS // 10):
            responses = await asyncio.gather(
                *(
                    client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
                    for _ in range(10)
                )
            )
            codes.extend(response.code for response in responses)
        app._test_server.stop()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, app.divak_force_flush, 60.0)
        return codes

    assert run(go()) == [200] * REQUESTS
    (queue,) = app.divak_span_queues
    assert queue.failed_spans == REQUESTS  # every span counted...
    assert queue.exported_spans == 0
    app.divak_shutdown()
    warnings = [
        record for record in log_records if record.levelno >= logging.WARNING
    ]
    # ...in at most two lines, whoever writes them.
    assert 1 <= len(warnings) <= 2, [(r.name, r.getMessage()) for r in warnings]
    (first, *_) = warnings
    assert first.name == "divak.reporters"
    assert first.getMessage().startswith(f"cannot send 2 spans to {url}: ")
    assert first.exc_info is None
