"""Several divak applications in one process, with or without a global provider.

Run as ``python tests/services/provider_conflicts.py MODE``; prints one
JSON document describing what each application's reporter received.
Modes:

``user-provider``
    the process set an SDK provider first (``service.name`` ``user-svc``);
    applications ``one`` and ``two`` join it, then ``one`` stops and
    ``three`` starts
``no-global``
    no global provider: ``one`` makes the global provider, ``two`` keeps a
    provider of its own
``rename``
    the process set an SDK provider first; one application asks for
    another service name, a second one for the provider's own name and a
    sample probability
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import typing

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder

mode = sys.argv[1]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


class CountingProvider(TracerProvider):
    """The user's provider; remembers every span processor added to it."""

    def __init__(self, **kwargs: typing.Any) -> None:
        super().__init__(**kwargs)
        self.added: list[str] = []

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self.added.append(type(span_processor).__name__)
        super().add_span_processor(span_processor)


user_exporter = InMemorySpanExporter()
user_provider: CountingProvider | None = None
if mode in ("user-provider", "rename"):
    user_provider = CountingProvider(
        resource=Resource.create({SERVICE_NAME: "user-svc"})
    )
    user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
    trace.set_tracer_provider(user_provider)


class Work(web.RequestHandler):
    def get(self) -> None:
        # Instrumentation other than divak's: the global tracer.
        with trace.get_tracer("user.code").start_as_current_span("user-span"):
            pass
        self.write("done")


class App(divak.Recorder, web.Application):
    def __init__(self, service: str | None) -> None:
        super().__init__([(r"/work", Work)])
        self.recorder = SpanRecorder()
        if service:
            self.set_divak_service(service)
        self.add_divak_reporter(self.recorder)
        self.add_divak_propagator(divak.ZipkinPropagation())


async def serve_one_request(app: App, headers: dict[str, str] | None = None) -> None:
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    response = await httpclient.AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}/work", headers=headers
    )
    assert response.body == b"done", response.body
    server.stop()


def outside(name: str) -> None:
    """A span started outside any request."""
    trace.get_tracer("user.code").start_span(name).end()


def describe(spans: typing.Iterable[ReadableSpan]) -> list[dict[str, typing.Any]]:
    return [
        {
            "name": span.name,
            "scope": span.instrumentation_scope.name,
            "service": span.resource.attributes.get(SERVICE_NAME),
            "trace_id": span.context.trace_id,
            "span_id": span.context.span_id,
            "parent": span.parent.span_id if span.parent else None,
            "debug": bool(span.attributes.get("divak.b3.debug")),
        }
        for span in spans
    ]


def divak_added() -> list[str]:
    assert user_provider is not None
    return [name for name in user_provider.added if name != "SimpleSpanProcessor"]


async def user_provider_mode() -> dict[str, typing.Any]:
    one, two = App("one"), App("two")
    await serve_one_request(one)
    after_one = divak_added()
    debug = {"X-B3-TraceId": "a" * 32, "X-B3-SpanId": "b" * 16, "X-B3-Flags": "1"}
    await serve_one_request(two, debug)
    after_two = divak_added()
    outside("outside")
    one.divak_force_flush(10)
    two.divak_force_flush(10)
    # "one" stops; a third application starts in the same process.
    one.divak_shutdown()
    three = App(None)
    await serve_one_request(three)
    outside("outside-later")
    three.divak_force_flush(10)
    two.divak_force_flush(10)
    result = {
        "added": [after_one, after_two, divak_added()],
        "one": describe(one.recorder.spans),
        "two": describe(two.recorder.spans),
        "three": describe(three.recorder.spans),
        "user": describe(user_exporter.get_finished_spans()),
        "service_names": [
            one.divak_service_name,
            two.divak_service_name,
            three.divak_service_name,
        ],
    }
    two.divak_shutdown()
    three.divak_shutdown()
    return result


async def no_global_mode() -> dict[str, typing.Any]:
    one, two = App("one"), App("two")
    await serve_one_request(one)
    await serve_one_request(two)
    outside("outside")
    one.divak_force_flush(10)
    two.divak_force_flush(10)
    result = {
        "global_is_one": trace.get_tracer_provider() is one.divak_tracer_provider,
        "one": describe(one.recorder.spans),
        "two": describe(two.recorder.spans),
    }
    one.divak_shutdown()
    two.divak_shutdown()
    return result


class SampledApp(divak.ProbabilisticSampler, App):
    def __init__(self, service: str | None) -> None:
        super().__init__(service)
        self.set_divak_sample_probability(0.5)


async def rename_mode() -> dict[str, typing.Any]:
    renamed, same = App("divak-svc"), SampledApp("user-svc")
    await serve_one_request(renamed)
    await serve_one_request(renamed)
    await serve_one_request(same)
    renamed.divak_force_flush(10)
    result = {
        "service_name": renamed.divak_service_name,
        "renamed": describe(renamed.recorder.spans),
    }
    renamed.divak_shutdown()
    same.divak_shutdown()
    return result


modes = {
    "user-provider": user_provider_mode,
    "no-global": no_global_mode,
    "rename": rename_mode,
}
sys.stdout.write(json.dumps(asyncio.run(modes[mode]())) + "\n")
