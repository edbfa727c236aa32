"""One benchmark variant as a server process.

Usage: ``python3 bench/server.py VARIANT PORT ZIPKIN_URL LOG_FILE``

Serves a hello-world JSON handler on 127.0.0.1:PORT until SIGTERM, then
flushes its spans and prints one JSON line on standard output with the
number of requests served, the peak RSS in KiB, for divak variants the
span counters of its reporter and, for variants with metrics (``+m``),
how many requests its ``http.server`` duration histogram counted.  Every
variant logs at INFO to LOG_FILE with the same handler and format.

Variants: ``plain``; ``divak``, ``otel`` (every trace sampled); the same
with ``-0.1%`` (0.1 % of the traces); each of the four with ``+m``
(metrics on: divak's default; OpenTelemetry's instrumentation with an SDK
``MeterProvider`` and an in-memory reader, as divak has).  A divak
variant takes options after slashes: ``/nofreeze`` (``settings['gc_freeze']
= False``), ``/b64`` (64 spans per upload, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``),
``/gc7000`` (the garbage collector's first threshold, :func:`gc.set_threshold`),
e.g. ``divak+m/b512/nofreeze``.

Environment:

``BENCH_SETTINGS``
   JSON object of extra settings for the divak application, e.g.
   ``{"gc_freeze": false}``.
``BENCH_GC_PAUSES``
   ``1``: time every garbage collection (``gc.callbacks``) and report each
   one (generation, start on the machine's monotonic clock, duration); at
   the end, time one more full collection and count the objects it walked
   and the frozen ones it skipped.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import resource
import signal
import sys
import time
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


def otel_app(
    zipkin: str, probability: float, metrics: bool = False
) -> tuple[web.Application, typing.Any, typing.Any]:
    """OpenTelemetry's Tornado instrumentation; with *metrics*, an SDK
    ``MeterProvider`` with an in-memory reader (as divak's scrape reader),
    so the instrumentation records its ``http.server.*`` metrics.

    :returns: the application, the tracer provider, the metric reader or
        :data:`None`
    """
    from opentelemetry import trace
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.instrumentation.tornado import TornadoInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider, sampling
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_NAME: "bench-otel"})
    provider = TracerProvider(
        sampler=sampling.ParentBased(sampling.TraceIdRatioBased(probability)),
        resource=resource,
    )
    provider.add_span_processor(BatchSpanProcessor(ZipkinExporter(endpoint=zipkin)))
    trace.set_tracer_provider(provider)
    reader = None
    options: dict[str, typing.Any] = {"tracer_provider": provider}
    if metrics:
        reader = InMemoryMetricReader()
        options["meter_provider"] = MeterProvider(
            metric_readers=[reader], resource=resource
        )
    TornadoInstrumentor().instrument(**options)
    return plain_app(), provider, reader


def divak_app(
    zipkin: str, probability: float, metrics: bool = False, **settings: typing.Any
) -> web.Application:
    """The divak variant; request metrics on with *metrics* (the default of
    a real application), off (``settings['metrics'] = False``) without."""
    import divak

    class Handler(divak.Logger, divak.RequestTracker, Hello):
        pass

    class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
        def __init__(self, **settings: typing.Any) -> None:
            super().__init__([(r"/", Handler)], **settings)
            self.set_divak_service("bench-divak")
            self.set_divak_sample_probability(probability)
            self.add_divak_reporter(divak.ZipkinReporter(zipkin))
            self.add_divak_propagator(divak.TraceContextPropagation())
            self.add_divak_propagator(divak.RequestIdPropagation())

    return Application(metrics=metrics, **settings)


def histogram_count(data: typing.Any, names: typing.Collection[str]) -> int:
    """Measurements the histograms called *names* counted in *data*, an
    OpenTelemetry ``MetricsData`` (all attribute sets)."""
    count = 0
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name in names:
                    count += sum(point.count for point in metric.data.data_points)
    return count


class GCPauses:
    """Times every garbage collection through ``gc.callbacks``.

    Each pause is kept with its start on :func:`time.monotonic`'s clock,
    which other processes of the machine share: the driver keeps the ones
    of its measured window.
    """

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: list[tuple[int, float, float]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.monotonic()
        else:
            self.pauses.append(
                (info["generation"], self.started, time.monotonic() - self.started)
            )

    def figures(self) -> dict[str, typing.Any]:
        """``gc_pauses``: (generation, start, seconds) of every collection."""
        return {"gc_pauses": self.pauses}


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


#: The histogram that counts every request, by whom.
DURATIONS = ("http.server.request.duration", "http.server.duration")


def main() -> None:
    name, port, zipkin, log_file = sys.argv[1:5]
    configure_logging(log_file)
    variant, *options = name.split("/")
    settings = json.loads(os.environ.get("BENCH_SETTINGS") or "{}")
    for option in options:
        if option == "nofreeze":
            settings["gc_freeze"] = False
        elif option.startswith("b") and option[1:].isdigit():
            os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = option[1:]
        elif option.startswith("gc") and option[2:].isdigit():
            gc.set_threshold(int(option[2:]), *gc.get_threshold()[1:])
        else:
            raise SystemExit(f"unknown variant option {option!r}")
    metrics = variant.endswith("+m")
    probability = 0.001 if variant.removesuffix("+m").endswith("0.1%") else 1.0
    sockets = netutil.bind_sockets(int(port), "127.0.0.1")
    provider = reader = None
    counted: list[int] = []
    pauses = None
    if os.environ.get("BENCH_GC_PAUSES") == "1":
        pauses = GCPauses()
        gc.callbacks.append(pauses)
    if variant.startswith("divak"):
        import divak

        app = divak_app(zipkin, probability, metrics=metrics, **settings)

        def count_metrics(app: typing.Any) -> None:
            # A shutdown callback: the metrics stop after these.
            counted.append(histogram_count(app.divak_metrics.collect(), DURATIONS))

        runner = divak.Runner(app, shutdown=[count_metrics])
        runner.shutdown_limit = 10.0
        asyncio.run(runner.serve(sockets))
    else:
        if variant.startswith("otel"):
            app, provider, reader = otel_app(zipkin, probability, metrics)
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
        if reader is not None:
            counted.append(histogram_count(reader.get_metrics_data(), DURATIONS))
        if provider is not None:
            provider.shutdown()
    figures = stats(app)
    if metrics:
        figures["metered"] = counted[0] if counted else 0
    if pauses is not None:
        gc.callbacks.remove(pauses)
        figures.update(pauses.figures())
        started = time.perf_counter()
        gc.collect()  # one more full collection, on the heap as it served
        figures["gc_full_ms"] = 1000 * (time.perf_counter() - started)
        figures["gc_tracked"] = len(gc.get_objects())
        figures["gc_frozen"] = gc.get_freeze_count()
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
