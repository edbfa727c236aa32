"""The pieces of a request's telemetry, timed one by one, in one process.

Run from the project root::

    python3 bench/hotpath.py               # request path and export
    python3 bench/hotpath.py --only export # encode and send per batch size

No server and no network for the request path: the benchmark's divak
application (``bench/server.py``) with metrics on, fully sampled and at
0.1 %, handles made-up requests (:class:`tornado.httputil.HTTPServerRequest`
objects with the headers wrk sends) through its real
:class:`~divak.tracing.pipeline.RequestPipeline`, tracer, sampler and
metrics; each step is timed alone, as a loop of many calls, and the
fastest of several repeats is printed in CPU microseconds per call (the
thread's CPU time, with the cyclic garbage collector paused: the loops
keep objects alive that a server frees at once).  The export part
encodes real SERVER spans of that application with divak's Zipkin encoder
in batches of several sizes (the whole ``serialize`` holds the interpreter
for its JSON step, and for up to the switch interval at a time in its
Python part), and sends them over a kept-alive connection to a local
collector in a child process (the CPU time counted is this thread's).

The metrics part times divak's ``request_finished`` (its attribute sets
recorded straight into the SDK's aggregations, see
:mod:`divak.metrics.bound`) next to the SDK's public
``Histogram.record`` of the same attribute set.
"""

from __future__ import annotations

import argparse
import gc
import http.server
import multiprocessing
import pathlib
import sys
import threading
import time
import typing

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import server  # noqa: E402 - bench/server.py, the benchmark's applications
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402
from tornado import httputil  # noqa: E402

import divak  # noqa: E402
from divak import propagation, semconv  # noqa: E402
from divak.context import RequestContext  # noqa: E402
from divak.export.zipkin_json import ZipkinV2Encoder, dumps  # noqa: E402
from divak.testing import SpanRecorder  # noqa: E402
from divak.tracing.pipeline import RequestPipeline  # noqa: E402
from divak.tracing.provider import unsampled_span  # noqa: E402

#: The headers wrk sends.
WRK_HEADERS = {"Host": "127.0.0.1:8000"}


class _Connection:
    """What a request needs of its connection: the peer and the scheme."""

    class context:  # noqa: N801 - Tornado's attribute name
        remote_ip = "127.0.0.1"
        protocol = "http"
        address = ("127.0.0.1", 40000)

    def set_close_callback(self, callback: typing.Any) -> None:
        pass


def new_request(extra: dict[str, str] | None = None) -> httputil.HTTPServerRequest:
    return httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=httputil.HTTPHeaders({**WRK_HEADERS, **(extra or {})}),
        connection=_Connection(),
    )


def timed(
    function: typing.Callable[[], typing.Any], number: int = 2000, repeat: int = 7
) -> float:
    """The fastest of *repeat* loops of *number* calls, in CPU µs per call
    (this thread's CPU time: another process on the CPU does not count)."""
    results = []
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.thread_time()
            for _ in range(number):
                function()
            results.append((time.thread_time() - started) / number * 1e6)
    finally:
        gc.enable()
    return min(results)


def timed_each(
    prepare: typing.Callable[[], typing.Any],
    function: typing.Callable[[typing.Any], typing.Any],
    number: int = 2000,
    repeat: int = 7,
) -> float:
    """As :func:`timed`, with a fresh argument from *prepare* for each call
    (made before the clock starts)."""
    results = []
    for _ in range(repeat):
        arguments = [prepare() for _ in range(number)]
        gc.disable()
        try:
            started = time.thread_time()
            for argument in arguments:
                function(argument)
            results.append((time.thread_time() - started) / number * 1e6)
        finally:
            gc.enable()
    return min(results)


class Handler(divak.Logger, divak.RequestTracker, server.Hello):
    pass


def application(probability: float, metrics: bool = True) -> typing.Any:
    app = server.divak_app("http://127.0.0.1:9/api/v2/spans", probability, metrics)
    app.divak_instrumentation.reporters[:] = [SpanRecorder()]
    return app


def line(label: str, value: float, note: str = "") -> None:
    print(f"  {label:<58} {value:7.2f} µs  {note}", flush=True)


# -- the request path -------------------------------------------------------
class Steps:
    """One application's request steps, timed one by one."""

    def __init__(self, probability: float) -> None:
        self.app = application(probability)
        self.instrumentation = self.app.divak_instrumentation
        self.tracer = self.instrumentation.tracer
        self.metrics = self.instrumentation.metrics
        self.request = new_request()
        self.parent = self.instrumentation.extract(self.request.headers)
        self.route = self.instrumentation.routes.template(Handler, "/")
        self.name = semconv.span_name("GET", self.route)
        self.attributes = self.server_attributes()
        self.attributes["divak.request_id"] = "x"

    def server_attributes(self) -> dict[str, typing.Any]:
        instrumentation = self.instrumentation
        return semconv.server_attributes(
            self.request, "GET", self.route, xheaders=True,
            limit=instrumentation.max_request_attribute_length,
            redacted=instrumentation.redacted_params,
        )

    def whole_start(self) -> float:
        pipelines: list[RequestPipeline] = []
        instrumentation = self.instrumentation

        def start(request: httputil.HTTPServerRequest) -> None:
            pipelines.append(RequestPipeline(instrumentation, request, Handler, None))

        result = timed_each(new_request, start)
        for pipeline in pipelines:  # end them: the queue and metrics stay bounded
            pipeline.context.status_code = 200
            pipeline._end_span()
        return result

    def start_steps(self) -> None:
        instrumentation, request, parent = (
            self.instrumentation, self.request, self.parent)
        line("RequestPipeline(...): the whole start", self.whole_start())
        line("  extract (propagators, owner mark)",
             timed(lambda: instrumentation.extract(request.headers)))
        line("    the propagators alone",
             timed(lambda: instrumentation.propagation.extract(request.headers)))
        for propagator in instrumentation.propagation.propagators:
            line(f"      {type(propagator).__name__}.extract, header absent",
                 timed(lambda p=propagator: p.extract(
                     request.headers, otel_context.Context())))
        line("  get_request_id", timed(lambda: propagation.get_request_id(parent)))
        line("  route template", timed(
            lambda: instrumentation.routes.template(Handler, "/")))
        line("  RequestContext(...)", timed(
            lambda: RequestContext(parent, "x", "svc", self.route)))
        span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        request_context = RequestContext(parent, "x", "svc", self.route)
        line("  RequestContext.set_span (its OpenTelemetry context)",
             timed(lambda: request_context.set_span(span)))
        line("  metrics.request_started",
             timed_each(new_request, self.metrics.request_started))
        tracer, name = self.tracer, self.name
        ids = tracer.id_generator  # type: ignore[attr-defined]

        def decide() -> None:
            if unsampled_span(tracer, name, parent) is None:
                ids.generate_trace_id()  # take the preset id, as start_span would

        line("  first decision: unsampled_span", timed(decide))
        sampler = tracer.sampler  # type: ignore[attr-defined]
        trace_id = 0x0AF7651916CD43DD8448EB211C80319C
        line("    sampler.should_sample (PropagatedSampler{ParentBased})",
             timed(lambda: sampler.should_sample(
                 parent, trace_id, name, SpanKind.SERVER)))
        line("    the wrapped sampler alone",
             timed(lambda: sampler.delegate.should_sample(
                 parent, trace_id, name, SpanKind.SERVER)))

    def sampled_steps(self) -> None:
        tracer, name, parent = self.tracer, self.name, self.parent
        attributes = self.attributes
        spans: list[typing.Any] = []

        def start() -> None:
            spans.append(tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, start_time=time.time_ns()))

        line("  tracer.start_span (with its own, second decision)", timed(start))
        processor = tracer.span_processor  # type: ignore[attr-defined]
        line("    the provider's processors' on_start (B3 marker, router)",
             timed(lambda: processor.on_start(spans[0], parent)))
        line(f"  semconv.server_attributes ({len(attributes) - 1} attributes)",
             timed(self.server_attributes))
        iterator = iter(spans)
        plain = {k: v for k, v in attributes.items() if k != "divak.request_id"}
        line("  span.set_attributes(those)", timed(
            lambda: next(iterator).set_attributes(plain), number=1000))
        line("  span.set_attribute('divak.request_id')", timed(
            lambda: next(iterator).set_attribute("divak.request_id", "x"),
            number=1000))
        pipeline = RequestPipeline(self.instrumentation, new_request(), Handler, None)
        line("  RequestPipeline._request_attributes (those, the id, captured)",
             timed(lambda: pipeline._request_attributes(
                 self.request, "GET", self.route, "x")))

        def start_with() -> None:
            spans.append(tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER,
                start_time=time.time_ns(), attributes=attributes))

        line("  tracer.start_span(attributes=...): one call", timed(start_with))
        for span in spans:
            span.end()
        spans.clear()

        def end(span: typing.Any) -> None:
            span.set_attribute("http.response.status_code", 200)
            span.end()

        def new_span() -> typing.Any:
            return tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

        line("  span end: status code + span.end() (processors, queue)",
             timed_each(new_span, end))
        ended = new_span()
        ended.end()
        readable = ended._readable_span()
        line("    span._readable_span() (the SDK's copy for on_end)",
             timed(ended._readable_span))
        line("    the provider's processors' on_end (B3 marker, router, queue)",
             timed(lambda: processor.on_end(readable)))
        queue = self.instrumentation.span_queues[0]
        line("      SpanQueue.on_end alone", timed(lambda: queue.on_end(readable)))
        self.instrumentation.force_flush()

    def metrics_steps(self) -> None:
        """``request_finished`` with and without a sampled span, next to
        the SDK's public ``Histogram.record`` of the same attribute set."""
        from divak.metrics import series as metric_series

        metrics, unsampled = self.metrics, self.parent
        span = self.tracer.start_span(self.name, context=unsampled)
        sampled = trace.set_span_in_context(span, unsampled)
        flag = span.get_span_context().trace_flags.sampled

        def finished(
            context: typing.Any, **kwargs: typing.Any
        ) -> typing.Callable[[typing.Any], None]:
            def finish(request: httputil.HTTPServerRequest) -> None:
                metrics.request_finished(
                    request, "/", 200, None, context, 0.001, **kwargs
                )

            return finish

        def started() -> httputil.HTTPServerRequest:
            request = new_request()
            metrics.request_started(request)
            return request

        line("  metrics.request_finished, unsampled context",
             timed_each(started, finished(unsampled)))
        line(f"  metrics.request_finished, span context (sampled={flag})",
             timed_each(started, finished(sampled)))
        line("    the same, the caller passes sampled",
             timed_each(started, finished(sampled, sampled=flag)))
        histogram = metrics.server_duration
        attributes = metric_series.server_attributes(
            "GET", "/", 200, None, "http", "HTTP/1.1")
        line("    SDK Histogram.record, attributes built, unsampled context",
             timed(lambda: histogram.record(0.001, attributes, unsampled)))
        line(f"    SDK Histogram.record, attributes built, sampled={flag}",
             timed(lambda: histogram.record(0.001, attributes, sampled)))
        span.end()


def request_path() -> None:
    for probability in (1.0, 0.001):
        print(f"\nsampling {probability:g}, metrics on", flush=True)
        steps = Steps(probability)
        steps.start_steps()
        if probability == 1.0:
            steps.sampled_steps()
        steps.metrics_steps()


# -- export -------------------------------------------------------------------
class _Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: typing.Any) -> None:
        pass


def _serve(port: typing.Any) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector) as httpd:
        port.value = httpd.server_address[1]
        httpd.serve_forever()


def real_spans(count: int) -> list[typing.Any]:
    """*count* SERVER spans as the benchmark's application makes them."""
    app = application(1.0, metrics=False)
    instrumentation = app.divak_instrumentation
    recorder = instrumentation.reporters[0]
    for _ in range(count):
        pipeline = RequestPipeline(instrumentation, new_request(
            {"User-Agent": "wrk"}), Handler, None)
        pipeline.context.status_code = 200
        pipeline._end_span()
    instrumentation.force_flush()
    return list(recorder.spans)


def export_batch(
    encoder: ZipkinV2Encoder, reporter: typing.Any, batch: list[typing.Any]
) -> None:
    size = len(batch)
    number = max(1, 2000 // size)
    encode_ms = timed(lambda: encoder.serialize(batch), number, 7) / 1000
    encoded = [encoder.encode_span(span) for span in batch]
    json_ms = timed(lambda: dumps(encoded), number, 7) / 1000
    reporter.export(batch)  # connect first
    cpu = []
    for _ in range(7):
        started = time.thread_time()
        for _ in range(number):
            reporter.export(batch)
        cpu.append((time.thread_time() - started) / number * 1000)
    send_ms = min(cpu) - encode_ms
    print(f"  {size:>6}  {encode_ms:>12.3f}  {1000 * encode_ms / size:>8.1f}  "
          f"{json_ms:>12.3f}  {send_ms:>13.3f}  {1000 * send_ms / size:>12.1f}",
          flush=True)


def export(sizes: list[int]) -> None:
    spans = real_spans(max(sizes) * 4)
    encoder = ZipkinV2Encoder()
    print("\nexport: Zipkin v2 JSON of real SERVER spans "
          f"({len(encoder.serialize(spans[:1]))} bytes each)", flush=True)
    print(f"  {'spans':>6}  {'serialize ms':>12}  {'µs/span':>8}  "
          f"{'JSON step ms':>12}  {'send ms (CPU)':>13}  {'send µs/span':>12}")
    port = multiprocessing.Value("i", 0)
    child = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    child.start()
    while not port.value:
        time.sleep(0.01)
    reporter = divak.ZipkinReporter(f"http://127.0.0.1:{port.value}/api/v2/spans")
    try:
        for size in sizes:
            export_batch(encoder, reporter, spans[:size])
    finally:
        reporter.shutdown()
        child.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["request", "export"])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128, 256, 512])
    args = parser.parse_args()
    gc.collect()
    gc.freeze()  # as a running service: full collections skip start-up objects
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; "
          f"{threading.active_count()} threads")
    if args.only in (None, "request"):
        request_path()
    if args.only in (None, "export"):
        export(args.sizes)


if __name__ == "__main__":
    main()
