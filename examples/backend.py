"""The demo's backend service: ``GET /greeting/{name}``.

Run it alone with ``PORT=8001 python examples/backend.py``.
"""

import asyncio
import os

from tornado import web

import divak


class GreetingHandler(
    divak.RequestTracker,
    divak.Logger,
    divak.ErrorLogger,
    divak.ErrorWriter,
    web.RequestHandler,
):
    async def get(self, name: str) -> None:
        with self.record_operation("load-greeting") as span:
            span.set_attribute("greeting.language", "en")
            await asyncio.sleep(0.005)  # stands for a database query
            self.add_divak_tag("greeting.template", "Hello, {name}!")
        with self.record_operation("render"):
            self.logger.info("greeting %s", name)
            self.write({"greeting": f"Hello, {name}!"})


def make_app(**settings) -> web.Application:
    """Build the backend; :func:`divak.run` passes the settings."""
    return Application(**settings)


class Application(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, **settings):
        super().__init__(
            [
                (r"/greeting/(?P<name>[^/]+)", GreetingHandler),
                (r"/status", divak.StatusHandler),
                (r"/metrics", divak.MetricsHandler),
            ],
            **settings,
        )
        self.set_divak_service("backend")
        self.set_divak_sample_probability(1.0)
        add_reporters(self)
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.ZipkinPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())


def add_reporters(app: divak.Recorder) -> None:
    """Report to the demo's collector and to a real Zipkin when configured."""
    if os.environ.get("DEMO_COLLECTOR_URL"):
        app.add_divak_reporter(divak.ZipkinReporter(os.environ["DEMO_COLLECTOR_URL"]))
    if os.environ.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT"):
        app.add_divak_reporter(divak.ZipkinReporter())


if __name__ == "__main__":
    divak.run(make_app)
