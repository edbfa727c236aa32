"""Interop with an independently written tracer: aiozipkin on aiohttp.

One trace crosses both ways: a client calls the aiozipkin service, which
calls a divak service, which calls the aiozipkin service again.  Both
tracers report to the same Zipkin endpoint; the spans must form one tree.
"""

from __future__ import annotations

import aiohttp
import aiozipkin
import pytest
from aiohttp import web as aioweb
from tornado import web

import divak
from tests.conftest import flush, listen, run
from tests.zipkin_schema import validate_spans


class Middle(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        response = await self.send_request(self.application.settings["leaf"])
        self.write(b"divak>" + response.body)


class DivakService(divak.Recorder, divak.Application):
    def __init__(self, collector, leaf: str) -> None:
        super().__init__([("/middle", Middle)], service="divak-service", leaf=leaf)
        self.add_divak_reporter(divak.ZipkinReporter(collector.url))
        self.add_divak_propagator(divak.ZipkinPropagation())


async def start_aiozipkin_service(collector):
    """An aiohttp service traced by aiozipkin; returns (runner, tracer, port, url)."""
    tracer = await aiozipkin.create(
        f"{collector.url}/spans",
        aiozipkin.create_endpoint("aiozipkin-service", ipv4="127.0.0.1"),
        sample_rate=1.0,
        send_interval=0.05,
    )
    state: dict = {}

    async def start(request: aioweb.Request) -> aioweb.Response:
        async with aiohttp.ClientSession(
            trace_configs=[aiozipkin.make_trace_config(tracer)]
        ) as session:
            async with session.get(state["middle"]) as response:
                body = await response.read()
        return aioweb.Response(body=b"aiozipkin>" + body)

    async def leaf(request: aioweb.Request) -> aioweb.Response:
        return aioweb.Response(body=b"leaf")

    app = aioweb.Application()
    app.router.add_get("/start", start)
    app.router.add_get("/leaf", leaf)
    aiozipkin.setup(app, tracer)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, tracer, port, state


@pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")
def test_one_joined_trace_across_aiozipkin_and_divak(collector):
    async def scenario():
        runner, tracer, port, state = await start_aiozipkin_service(collector)
        try:
            service = DivakService(collector, f"http://127.0.0.1:{port}/leaf")
            state["middle"] = f"http://127.0.0.1:{listen(service)}/middle"
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/start") as answer:
                    body = await answer.read()
            await flush(service)
        finally:
            await runner.cleanup()  # closes the tracer: its spans are sent
        return body

    assert run(scenario()) == b"aiozipkin>divak>leaf"
    spans = collector.wait_for(lambda s: len(s) >= 5)
    assert len({s["traceId"].rjust(32, "0") for s in spans}) == 1

    def one(service: str, kind: str, path: str | None = None) -> dict:
        found = [
            s
            for s in spans
            if s["localEndpoint"]["serviceName"] == service
            and s.get("kind") == kind
            and (path is None or path in s.get("name", "") + str(s.get("tags")))
        ]
        assert len(found) == 1, (service, kind, path, spans)
        return found[0]

    az_start = one("aiozipkin-service", "SERVER", "/start")
    az_client = one("aiozipkin-service", "CLIENT")
    dv_server = one("divak-service", "SERVER")
    dv_client = one("divak-service", "CLIENT")
    az_leaf = one("aiozipkin-service", "SERVER", "/leaf")

    validate_spans([dv_server, dv_client])
    assert az_start.get("parentId") is None  # aiozipkin writes null for a root
    assert az_client["parentId"] == az_start["id"]
    # divak starts its own server span under aiozipkin's client span...
    assert dv_server["parentId"] == az_client["id"]
    assert dv_client["parentId"] == dv_server["id"]
    # ...and aiozipkin joins divak's client span (B3 shared span ids).  divak
    # sends no X-B3-ParentSpanId (OpenTelemetry's propagators specification:
    # MUST NOT), so aiozipkin's server half of the shared span names no
    # parent; Zipkin merges the two halves of one id, and the client half
    # names divak's server span: the trace stays one tree.
    assert az_leaf["id"] == dv_client["id"]
    assert az_leaf.get("parentId") is None
    assert az_leaf.get("shared") is True
    assert az_leaf["traceId"] == dv_client["traceId"] == az_start["traceId"]
