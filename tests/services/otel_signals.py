"""A divak service whose traces, metrics and logs leave the process.

Run as ``python tests/services/otel_signals.py MODE [SECONDS]``; serves
one request of ``/work`` (which logs a WARNING inside the request) and one
scrape of ``/metrics`` on 127.0.0.1, keeps serving SECONDS more (default
0), shuts the application down and prints one JSON document on its last
line.  The environment (``OTEL_*``) is the test's.
Modes:

``own``
    nothing set up by the process: divak's providers
``global-meter``
    the process set an SDK ``MeterProvider`` with its own reader first
``global-meter-private``
    the same, with ``settings['divak_global_provider'] = False``
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder

mode = sys.argv[1]
linger = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
user_reader = InMemoryMetricReader()
if mode.startswith("global-meter"):
    metrics.set_meter_provider(MeterProvider(metric_readers=[user_reader]))


class Work(web.RequestHandler):
    def get(self) -> None:
        logging.getLogger("work").warning("working on it")
        self.write("done")


class App(divak.Recorder, web.Application):
    pass


def user_metrics() -> list[dict]:
    data = user_reader.get_metrics_data()
    found = []
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            for metric in scope_metrics.metrics:
                found.append(
                    {
                        "name": metric.name,
                        "scope": [scope.name, scope.version, scope.schema_url],
                        "points": len(metric.data.data_points),
                    }
                )
    return found


async def main() -> None:
    app = App(
        [(r"/work", Work), (r"/metrics", divak.MetricsHandler)],
        divak_global_provider=(mode != "global-meter-private"),
    )
    app.set_divak_service("signals")
    recorder = SpanRecorder()
    app.add_divak_reporter(recorder)
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    client = httpclient.AsyncHTTPClient()
    work = await client.fetch(f"http://127.0.0.1:{port}/work")
    scrape = await client.fetch(f"http://127.0.0.1:{port}/metrics", raise_error=False)
    await asyncio.sleep(linger)
    server.stop()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, app.divak_shutdown)
    spans = [
        {
            "name": span.name,
            "trace_id": f"{span.context.trace_id:032x}",
            "span_id": f"{span.context.span_id:016x}",
            "resource": dict(span.resource.attributes),
        }
        for span in recorder.spans
    ]
    seen = {
        "work": work.code,
        "scrape": {"code": scrape.code, "body": scrape.body.decode()},
        "spans": spans,
        "user_metrics": user_metrics(),
    }
    sys.stdout.write(json.dumps(seen) + "\n")
    sys.stdout.flush()


asyncio.run(main())
