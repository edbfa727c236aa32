"""divak.api keeps divak-tornado's names; its README example runs."""

from __future__ import annotations

import json

from tornado import gen, httpclient, web

import divak
import divak.api
from divak.testing import ZipkinCollector

from .conftest import flush, listen, run
from .zipkin_schema import validate_spans


def test_divak_tornado_names() -> None:
    for name in (
        "RequestTracker",
        "HttpClientMixin",
        "Recorder",
        "ProbabilisticSampler",
        "ZipkinReporter",
        "ZipkinPropagation",
        "RequestIdPropagation",
    ):
        assert getattr(divak.api, name) is getattr(divak, name)
    assert divak.api.RequestIdPropagator is divak.RequestIdPropagation
    # divak-tornado's Logger was a RequestHandler, divak's is a mix-in
    assert issubclass(divak.api.Logger, divak.Logger)
    assert issubclass(divak.api.Logger, web.RequestHandler)


class _Helpers:
    """What divak-tornado's README leaves to the reader: a query and a writer."""

    @gen.coroutine
    def query(self, sql):
        return [{"id": 1}, {"id": 2}]

    def send_response(self, output):
        self.write(json.dumps([body.decode() for body in output]))


def test_divak_tornado_readme_example_runs(collector: ZipkinCollector) -> None:
    # The README's classes, with divak.api spelled exactly as there.
    class MyHandler(
        _Helpers,
        divak.api.RequestTracker,
        divak.api.Logger,
        divak.api.HttpClientMixin,
        web.RequestHandler,
    ):
        def initialize(self):
            super().initialize()
            self.set_divak_name("foo")

        @gen.coroutine
        def get(self):
            with self.record_operation("query-db"):
                rows = yield self.query("...")
                self.add_divak_tag("query-db.rowcount", len(rows))

            output = []
            for row in rows:
                self.logger.debug("requesting %r", row["id"])
                response = yield self.send_request(
                    "{}/?id={}".format(self.settings["downstream"], row["id"]),
                    method="GET",
                )
                output.append(response.body)
            self.set_status(200)
            self.send_response(output)

    class Echo(web.RequestHandler):
        def get(self):
            self.write(self.get_argument("id"))

    class Application(
        divak.api.Recorder, divak.api.ProbabilisticSampler, web.Application
    ):
        def __init__(self, *args, **kwargs):
            handlers = [web.url(r"/", MyHandler)]

            super().__init__(handlers, *args, **kwargs)
            self.set_divak_service("my-service")
            self.set_divak_sample_probability(1.0)  # README: 1.0 / 1000.0
            self.add_divak_reporter(divak.api.ZipkinReporter(collector.url))
            self.add_divak_propagator(divak.api.ZipkinPropagation())

    async def scenario():
        downstream = web.Application([(r"/", Echo)])
        app = Application(downstream=f"http://127.0.0.1:{listen(downstream)}")
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{listen(app)}/"
        )
        await flush(app)
        return response

    response = run(scenario())
    assert json.loads(response.body) == ["1", "2"]
    spans = collector.wait_for(lambda spans: len(spans) >= 4)
    validate_spans(spans)
    names = sorted(span["name"] for span in spans)
    assert names == ["GET", "GET", "foo", "query-db"]
    query = next(s for s in spans if s["name"] == "query-db")
    assert query["tags"]["query-db.rowcount"] == "2"
