"""What retention costs a request the sampler drops: a micro-benchmark.

Run from the project root::

    python3 bench/retention.py                       # 7 rounds of 20,000 requests
    python3 bench/retention.py --rounds 11 --requests 50000
    python3 bench/retention.py --compare ../previous  # also an older checkout

Each round serves the same requests through a real :class:`divak.Recorder`
application, in this process, without sockets: a Tornado
``HTTPServerRequest`` on a connection that discards what it is given goes
through the application's routing, the request's
:class:`~divak.tracing.pipeline.RequestPipeline`, the handler's task, the
response and the access log (its logger set to CRITICAL, so no line is
written), exactly as over a socket.  The sampler samples nothing
(``set_divak_sample_probability(0.0)``), metrics are off, the reporter
discards what it receives.  It prints the CPU time (user + system) per
request, median over the rounds, of:

``unsampled``
    ``GET /hello``, a 200 answer: what every unsampled request pays;
``unsampled+op``
    the same with one ``record_operation`` in the handler;
``500 retained``
    ``GET /fail``, a 500 answer that is retained and exported (the rate
    limit set high enough to keep all), for scale; in a checkout from
    before retention, the same 500 answer, not exported.

Each is measured with retention as configured by default (errors kept)
and, for comparison, off (``set_divak_retention(errors=False)``).  With
``--compare DIR`` every round also runs the same requests, in a child
process, with the ``divak`` package of the checkout *DIR* (e.g. the
commit before retention, where the variants have no retention at all);
rounds alternate between the two trees, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import typing

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from tornado import concurrent, httputil, web

import divak

BATCH = 100
#: Requests measured in one go; the variants take turns chunk by chunk.
CHUNK = 500


class Discard(SpanExporter):
    """A reporter that accepts every span and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: typing.Sequence[typing.Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class _Context:
    remote_ip = "127.0.0.1"
    protocol = "http"
    address = ("127.0.0.1", 50000)


class Connection:
    """The smallest HTTP connection a handler writes to: it discards everything."""

    context = _Context()

    def set_close_callback(self, callback: typing.Any) -> None:
        pass

    def write_headers(
        self, start_line: typing.Any, headers: typing.Any, chunk: bytes | None = None
    ) -> concurrent.Future[None]:
        return _done()

    def write(self, chunk: bytes) -> concurrent.Future[None]:
        return _done()

    def finish(self) -> None:
        pass


def _done() -> concurrent.Future[None]:
    future: concurrent.Future[None] = concurrent.Future()
    future.set_result(None)
    return future


class Hello(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


class Operation(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        with self.record_operation("work"):
            self.write("hello")


class Fail(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        raise web.HTTPError(500)


#: Retention keyword arguments of a variant; None: the default configuration.
Retention = tuple[tuple[str, typing.Any], ...] | None
OFF: Retention = (("errors", False),)
ALL_ERRORS: Retention = (("errors", True), ("max_per_second", 1e9))
HAS_RETENTION = hasattr(divak.Recorder, "set_divak_retention")


class App(divak.ProbabilisticSampler, divak.Recorder, web.Application):
    def __init__(self, retention: Retention) -> None:
        super().__init__(
            [("/hello", Hello), ("/op", Operation), ("/fail", Fail)],
            metrics=False,
            service="bench-retention",
        )
        self.add_divak_reporter(Discard())
        self.set_divak_sample_probability(0.0)
        if retention is not None:
            self.set_divak_retention(**dict(retention))


def new_request(path: str) -> httputil.HTTPServerRequest:
    """A ``GET`` of *path* as Tornado's HTTP server makes it."""
    return httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine("GET", path, "HTTP/1.1"),
        headers=httputil.HTTPHeaders({"Host": "localhost", "User-Agent": "bench"}),
        connection=CONNECTION,  # type: ignore[arg-type]
    )


CONNECTION = Connection()


def served(app: App, path: str, count: int) -> float:
    """CPU seconds per request of *count* requests for *path*, served whole."""

    async def serve() -> float:
        started = time.process_time()
        for _ in range(count // BATCH):
            for _ in range(BATCH):
                app.find_handler(new_request(path)).execute()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        return (time.process_time() - started) / (count // BATCH * BATCH)

    return typing.cast(float, asyncio.run(serve()))


def pipelined(app: App, path: str, count: int) -> float:
    """CPU seconds per request of the pipeline alone, *count* requests.

    The request's :class:`~divak.tracing.pipeline.RequestPipeline` is made
    (extract, sample, start), one ``record_operation`` runs for ``/op``,
    and the response is reported finished, with a 500 status for
    ``/fail`` (one handler object, reused, answers them all).
    """
    handler_class = {"/hello": Hello, "/op": Operation, "/fail": Fail}[path]
    handler = handler_class(app, new_request(path))
    handler.set_status(500 if path == "/fail" else 200)
    operation = path == "/op"
    started = time.process_time()
    for _ in range(count):
        request = new_request(path)
        pipeline = app.get_handler_delegate(request, handler_class)
        handler.request = request
        if operation:
            with handler.record_operation("work"):
                pass
        pipeline.response_finished(handler)
    return (time.process_time() - started) / count


#: How each kind of variant is measured.
KINDS = {"pipeline": pipelined, "served": served}


def variants() -> list[tuple[str, str, Retention, str]]:
    """(name, kind, retention, path) of each variant this tree can run."""
    made: list[tuple[str, str, Retention, str]] = []
    for kind in KINDS:
        if not HAS_RETENTION:  # a checkout from before retention
            made += [
                (f"{kind}: unsampled", kind, None, "/hello"),
                (f"{kind}: unsampled+op", kind, None, "/op"),
                (f"{kind}: 500 (not retained)", kind, None, "/fail"),
            ]
            continue
        made += [
            (f"{kind}: unsampled", kind, None, "/hello"),
            (f"{kind}: unsampled, retention off", kind, OFF, "/hello"),
            (f"{kind}: unsampled+op", kind, None, "/op"),
            (f"{kind}: unsampled+op, retention off", kind, OFF, "/op"),
            (f"{kind}: 500 retained", kind, ALL_ERRORS, "/fail"),
        ]
    return made


#: Variant -> the variant it is compared with, chunk by chunk.
PAIRS = {
    f"{kind}: {name}": f"{kind}: {name}, retention off"
    for kind in KINDS
    for name in ("unsampled", "unsampled+op")
}


def one_round(count: int) -> dict[str, float]:
    """Seconds per request of each variant (median over chunks of
    :data:`CHUNK` requests, the variants taking turns), and the median of
    the chunk-by-chunk differences of each pair of :data:`PAIRS`."""
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
    logging.getLogger("tornado.general").setLevel(logging.CRITICAL)
    logging.getLogger("divak.retention").setLevel(logging.CRITICAL)
    apps: dict[Retention, App] = {}
    for _name, kind, retention, path in variants():
        app = apps.get(retention)
        if app is None:
            app = apps[retention] = App(retention)
        KINDS[kind](app, path, CHUNK)  # warm up: provider, routes, caches
    chunks: dict[str, list[float]] = {}
    for _ in range(max(count // CHUNK, 1)):
        for name, kind, retention, path in variants():
            seconds = KINDS[kind](apps[retention], path, CHUNK)
            chunks.setdefault(name, []).append(seconds)
    for app in apps.values():
        app.divak_shutdown()
    results = {name: statistics.median(values) for name, values in chunks.items()}
    for name, other in PAIRS.items():
        if name in chunks and other in chunks:
            results[f"{name} - off"] = statistics.median(
                a - b for a, b in zip(chunks[name], chunks[other], strict=True)
            )
    return results


def child(tree: str, count: int) -> dict[str, float]:
    """One round in a child process that imports ``divak`` from *tree*."""
    environment = dict(os.environ, PYTHONPATH=tree)
    output = subprocess.run(
        [sys.executable, __file__, "--child", "--requests", str(count)],
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return typing.cast(dict[str, float], json.loads(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compare", metavar="DIR", help="another checkout")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(one_round(options.requests)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here}
    if options.compare:
        trees["compared"] = os.path.abspath(options.compare)
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
    for _ in range(options.rounds):
        for label, tree in trees.items():
            rounds[label].append(child(tree, options.requests))
    print(
        f"{options.rounds} rounds of {options.requests} requests per variant; "
        "CPU µs per request, median over rounds (min-max)"
    )
    for label, results in rounds.items():
        for name in results[0]:
            values = [result[name] * 1e6 for result in results]
            print(
                f"{label:10} {name:42} {statistics.median(values):7.2f}"
                f"  ({min(values):.2f} to {max(values):.2f})"
            )
    if options.compare:
        # Round by round: the two trees ran one after the other.
        for name in rounds["compared"][0]:
            if name not in rounds["this tree"][0]:
                continue
            deltas = [
                (ours[name] - theirs[name]) * 1e6
                for ours, theirs in zip(
                    rounds["this tree"], rounds["compared"], strict=True
                )
            ]
            print(
                f"this tree - compared  {name:32} {statistics.median(deltas):+7.2f}"
                f"  ({min(deltas):+.2f} to {max(deltas):+.2f})"
            )


if __name__ == "__main__":
    main()
