"""One benchmark variant as a server process.

Usage: ``python3 bench/server.py VARIANT PORT ZIPKIN_URL LOG_FILE``

Serves a hello-world JSON handler on 127.0.0.1:PORT until SIGTERM, then
flushes its spans and prints one JSON line on standard output with the
number of requests served, the peak RSS in KiB and, for divak variants,
the span counters of its reporter.  Every variant logs at INFO to
LOG_FILE with the same handler and format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import sys
import typing

from tornado import httpserver, netutil, web

LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s: %(message)s "
    "[trace_id=%(otelTraceID)s request_id=%(divak_request_id)s]"
)
served = 0


def configure_logging(path: str) -> None:
    """INFO to *path*, the same format for every variant."""
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter(
            LOG_FORMAT, defaults={"otelTraceID": "0", "divak_request_id": ""}
        )
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class Hello(web.RequestHandler):
    def get(self) -> None:
        global served
        served += 1
        self.write({"message": "hello, world"})


def plain_app() -> web.Application:
    return web.Application([(r"/", Hello)])


def otel_app(zipkin: str, probability: float) -> tuple[web.Application, typing.Any]:
    from opentelemetry import trace
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.instrumentation.tornado import TornadoInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider, sampling
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        sampler=sampling.ParentBased(sampling.TraceIdRatioBased(probability)),
        resource=Resource.create({SERVICE_NAME: "bench-otel"}),
    )
    provider.add_span_processor(BatchSpanProcessor(ZipkinExporter(endpoint=zipkin)))
    trace.set_tracer_provider(provider)
    TornadoInstrumentor().instrument(tracer_provider=provider)
    return plain_app(), provider


def divak_app(
    zipkin: str, probability: float, metrics: bool = False
) -> web.Application:
    """The divak variant; request metrics on with *metrics* (the default of
    a real application), off (``settings['metrics'] = False``) without."""
    import divak

    class Handler(divak.Logger, divak.RequestTracker, Hello):
        pass

    class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
        def __init__(self, **settings: typing.Any) -> None:
            super().__init__([(r"/", Handler)], metrics=metrics, **settings)
            self.set_divak_service("bench-divak")
            self.set_divak_sample_probability(probability)
            self.add_divak_reporter(divak.ZipkinReporter(zipkin))
            self.add_divak_propagator(divak.TraceContextPropagation())
            self.add_divak_propagator(divak.RequestIdPropagation())

    return Application()


def peak_rss_kib() -> int:
    """This process's peak RSS.

    ``VmHWM`` rather than ``ru_maxrss``: the latter survives ``exec`` and
    so starts at the RSS of the forked benchmark driver.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def stats(app: typing.Any) -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {
        "served": served,
        "maxrss_kib": peak_rss_kib(),
    }
    for queue in getattr(app, "divak_span_queues", ()):
        for name in ("dropped_spans", "failed_spans", "exported_spans"):
            out[name] = out.get(name, 0) + getattr(queue, name)
    return out


def main() -> None:
    variant, port, zipkin, log_file = sys.argv[1:5]
    configure_logging(log_file)
    probability = 0.001 if variant.removesuffix("+m").endswith("0.1%") else 1.0
    sockets = netutil.bind_sockets(int(port), "127.0.0.1")
    provider = None
    if variant.startswith("divak"):
        import divak

        app = divak_app(zipkin, probability, metrics=variant.endswith("+m"))
        runner = divak.Runner(app)
        runner.shutdown_limit = 10.0
        asyncio.run(runner.serve(sockets))
    else:
        if variant.startswith("otel"):
            app, provider = otel_app(zipkin, probability)
        else:
            app = plain_app()

        async def serve() -> None:
            server = httpserver.HTTPServer(app, xheaders=True)
            server.add_sockets(sockets)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            server.stop()
            await server.close_all_connections()

        asyncio.run(serve())
        if provider is not None:
            provider.shutdown()
    print(json.dumps(stats(app)), flush=True)


if __name__ == "__main__":
    main()
