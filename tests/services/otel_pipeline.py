"""A divak service inside a process with its own OpenTelemetry set-up.

Run as ``python tests/services/otel_pipeline.py MODE``; prints one JSON
document describing the spans each pipeline received.  Modes:

``no-global``
    no global provider set: divak's becomes the global one
``preset-global``
    the process set an SDK provider first: divak adds its reporter to it
``private``
    ``divak_global_provider=False``: divak neither sets nor uses the global
``tornado-instrumented``
    OpenTelemetry's tornado instrumentation is active too
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tornado import web

import divak
from divak.testing import SpanRecorder

mode = sys.argv[1]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
user_exporter = InMemorySpanExporter()
if mode == "preset-global":
    user_provider = TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
    trace.set_tracer_provider(user_provider)
if mode == "tornado-instrumented":
    from opentelemetry.instrumentation.tornado import TornadoInstrumentor

    TornadoInstrumentor().instrument()
HTTPXClientInstrumentor().instrument()


class Downstream(web.RequestHandler):
    def get(self) -> None:
        self.write("down")


class Calls(web.RequestHandler):
    async def get(self) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.settings["downstream"])
        with trace.get_tracer("user.code").start_as_current_span("user-span"):
            pass
        self.write(response.text)


class App(divak.Recorder, web.Application):
    pass


async def main() -> None:
    downstream = web.Application([(r"/", Downstream)])
    server = downstream.listen(0, "127.0.0.1")
    down_port = next(iter(server._sockets.values())).getsockname()[1]
    app = App(
        [(r"/calls", Calls)],
        downstream=f"http://127.0.0.1:{down_port}/",
        divak_global_provider=(mode != "private"),
    )
    recorder = SpanRecorder()
    app.set_divak_service("pipeline")
    app.add_divak_reporter(recorder)
    app_server = app.listen(0, "127.0.0.1")
    port = next(iter(app_server._sockets.values())).getsockname()[1]
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/calls")
    assert response.status_code == 200, response.status_code
    app.divak_force_flush(10)

    def describe(spans):
        return [
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": span.context.trace_id,
                "span_id": span.context.span_id,
                "parent": span.parent.span_id if span.parent else None,
                "scope": span.instrumentation_scope.name,
            }
            for span in spans
        ]

    sys.stdout.write(
        json.dumps(
            {
                "divak": describe(recorder.spans),
                "user": describe(user_exporter.get_finished_spans()),
                "global_is_divak": trace.get_tracer_provider()
                is app.divak_tracer_provider,
            }
        )
        + "\n"
    )
    app.divak_shutdown()


asyncio.run(main())
