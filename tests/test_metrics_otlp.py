"""Metrics pushed over OTLP/HTTP to a real receiver; failures counted, logged rarely."""

from __future__ import annotations

import asyncio
import logging
import time

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from tornado import web

import divak
from divak import metrics
from tests.conftest import free_port, listen, run
from tests.services.metrics_service import Application
from tests.test_metrics import fetch


class Receiver(web.RequestHandler):
    def initialize(self, received: list[ExportMetricsServiceRequest]) -> None:
        self.received = received

    def post(self) -> None:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(self.request.body)
        self.received.append(message)
        self.set_header("Content-Type", "application/x-protobuf")
        self.finish(b"")


def durations(message: ExportMetricsServiceRequest) -> dict[str, int]:
    found: dict[str, int] = {}
    for resource_metrics in message.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == metrics.SERVER_DURATION:
                    for point in metric.histogram.data_points:
                        attributes = {a.key: a.value for a in point.attributes}
                        route = attributes["http.route"].string_value
                        found[route] = found.get(route, 0) + point.count
    return found


def test_shutdown_pushes_the_last_metrics_to_the_collector() -> None:
    async def main() -> None:
        received: list[ExportMetricsServiceRequest] = []
        receiver = web.Application([(r"/v1/metrics", Receiver, {"received": received})])
        receiver_port = listen(receiver)
        app = Application()
        reporter = divak.OTLPMetricsReporter(
            f"http://127.0.0.1:{receiver_port}/v1/metrics", interval=3600
        )
        app.add_divak_metrics_reporter(reporter)
        port = listen(app)
        for index in range(3):
            assert (await fetch(port, f"/items/{index}")).code == 200
        assert received == []  # an hour to the next periodic push
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, app.divak_metrics.shutdown, 10.0)
        assert reporter.exported == 1 and reporter.failed_exports == 0
        [message] = received
        assert durations(message) == {"/items/{item_id}": 3}
        resource = {
            a.key: a.value.string_value
            for a in message.resource_metrics[0].resource.attributes
        }
        assert resource["service.name"] == "metered"
        assert resource["service.instance.id"]  # one per process: streams never collide

    run(main())


def test_a_dead_collector_is_counted_and_logged_once_a_minute(
    log_records: list[logging.LogRecord],
) -> None:
    async def main() -> None:
        app = Application()
        reporter = divak.OTLPMetricsReporter(
            f"http://127.0.0.1:{free_port()}/v1/metrics", interval=0.05, timeout=0.5
        )
        app.add_divak_metrics_reporter(reporter)
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200  # requests never suffer
        deadline = time.monotonic() + 30
        while reporter.failed_exports < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert reporter.failed_exports >= 3
        assert (await fetch(port, "/items/1")).code == 200
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, app.divak_metrics.shutdown, 2.0)

    run(main())
    lines = [
        r
        for r in log_records
        if r.levelno >= logging.WARNING and "metrics" in r.getMessage()
    ]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "cannot push metrics to http://127.0.0.1:" in lines[0].getMessage()
    assert lines[0].exc_info is None
    assert not any(r.name.startswith("opentelemetry.exporter") for r in log_records)
