"""State in one place: the application's instrumentation keeps the service name.

The name given to ``set_divak_service`` is kept once, by the
application's instrumentation; the ``Server`` header of a
:class:`divak.Application` and the spans both read it from there, so
they can never disagree, and the application's settings stay as given.
"""

from __future__ import annotations

import json
import typing

from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder

from .conftest import flush, listen, run


class Hello(web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


class App(divak.Recorder, divak.Application):
    def __init__(self, recorder: SpanRecorder, **settings: typing.Any) -> None:
        super().__init__([(r"/", Hello)], **settings)
        self.add_divak_reporter(recorder)


def server_header_and_span_service(app: App, recorder: SpanRecorder) -> tuple[str, str]:
    async def go() -> str:
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(f"http://127.0.0.1:{port}/")
        finally:
            client.close()
            app._test_server.stop()
        await flush(app)
        return response.headers["Server"]

    server = run(go())
    resource = recorder.one("GET /").resource
    return server, str(resource.attributes["service.name"])


def test_set_divak_service_is_kept_by_the_instrumentation_only() -> None:
    recorder = SpanRecorder()
    app = App(recorder, version="1.2")
    app.set_divak_service("checkout")
    assert "service" not in app.settings
    assert app.divak_instrumentation.requested_service_name == "checkout"
    server, service = server_header_and_span_service(app, recorder)
    assert server == "checkout/1.2"
    assert service == app.divak_service_name == "checkout"
    assert "service" not in app.settings


def test_header_and_spans_name_the_same_service() -> None:
    # A name in the settings and another in code: one of them wins for
    # everything, instead of the header showing one and the spans the other.
    recorder = SpanRecorder()
    app = App(recorder, service="from-settings")
    app.set_divak_service("from-code")
    server, service = server_header_and_span_service(app, recorder)
    assert (server, service) == ("from-code", "from-code")
    assert app.settings["service"] == "from-settings"


def test_the_settings_name_serves_both_without_set_divak_service() -> None:
    recorder = SpanRecorder()
    app = App(recorder, service="inventory", version="3")
    server, service = server_header_and_span_service(app, recorder)
    assert (server, service) == ("inventory/3", "inventory")


def test_the_debug_page_names_the_service_of_the_spans() -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    app.set_divak_service("checkout")
    app.set_divak_debug_page("/divak")

    async def go() -> dict[str, typing.Any]:
        port = listen(app)
        client = httpclient.AsyncHTTPClient(force_instance=True)
        try:
            response = await client.fetch(f"http://127.0.0.1:{port}/divak?format=json")
        finally:
            client.close()
            app._test_server.stop()
        return json.loads(response.body)

    assert run(go())["service_name"] == "checkout"
