"""Span names, attribute keys and values are bounded, whatever a handler passes."""

from __future__ import annotations

from tornado import httpclient, web

import divak
from divak import semconv
from divak.testing import SpanRecorder
from divak.tracing.provider import DEFAULT_ATTRIBUTE_LENGTH
from tests.conftest import listen, run


class Hostile(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.add_divak_tag("k" * 46_000, "v" * 100_000)
        with self.record_operation("op" * 20_000):
            pass
        self.set_divak_name("name" * 10_000)
        self.write("ok")


def test_huge_names_keys_and_values_are_bounded() -> None:
    recorder = SpanRecorder()

    async def main() -> None:
        app = divak.Recorder([(r"/", Hostile)])
        app.add_divak_reporter(recorder)
        port = listen(app)
        response = await httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/")
        assert response.code == 200
        app.divak_force_flush()
        app.divak_shutdown()

    run(main())
    spans = recorder.spans
    assert len(spans) == 2
    for span in spans:
        assert len(span.name) <= semconv.MAX_TEXT_LENGTH
        for key, value in (span.attributes or {}).items():
            assert len(key) <= semconv.MAX_TEXT_LENGTH
            if isinstance(value, str):
                assert len(value) <= DEFAULT_ATTRIBUTE_LENGTH
    [server] = [s for s in spans if s.kind.name == "SERVER"]
    assert server.name == ("name" * 10_000)[: semconv.MAX_TEXT_LENGTH]
    assert ("k" * semconv.MAX_TEXT_LENGTH) in server.attributes
