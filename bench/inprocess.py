"""CPU microseconds per request of each variant's server side, in one process.

Run from the project root::

    python3 bench/inprocess.py                    # every variant, 3 rounds
    python3 bench/inprocess.py --variants plain divak-0.1%+m --requests 20000

Steadier than ``bench/run.py`` on a busy machine, and meant for comparing
two versions of the code: each variant (``bench/server.py``'s
applications, served as there: divak's by :class:`divak.Runner`'s
``DrainingHTTPServer``) runs in a fresh process, which serves requests
sent by a client in the same process and IOLoop over socket pairs (16
connections, one request at a time on each, wrk's ``Host`` header).  The
figure is the process's CPU time (every thread: the span export included,
to a collector in a child process) per request, minus nothing: the
client's share is the same for every variant, so the differences between
variants are what each costs; ``Δ µs`` is that difference to plain Tornado.
The fastest of the rounds is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.server
import json
import multiprocessing
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing

HERE = pathlib.Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
VARIANTS = ["plain", "divak-0.1%+m", "divak+m", "otel-0.1%", "otel"]


class _Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: typing.Any) -> None:
        pass


def _collect(port: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    port.put(server.server_address[1])
    server.serve_forever()


async def _client(stream: typing.Any, count: int) -> None:
    for _ in range(count):
        await stream.write(REQUEST)
        head = await stream.read_until(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await stream.read_bytes(length)


def _ladder(server: typing.Any, zipkin: str, step: int) -> typing.Any:
    """divak's pieces added one at a time, at 0.1 % sampling (``ladderN``):

    0. a :class:`divak.Application` (no Recorder), plain handler;
    1. plus :class:`divak.Recorder`, metrics off, no propagator added;
    2. plus ``RequestIdPropagation`` and ``TraceContextPropagation``;
    3. plus metrics (the application's default);
    4. plus the handler's ``Logger`` and ``RequestTracker`` mix-ins (the
       ``divak-0.1%+m`` variant).
    """
    import divak

    handler: type = server.Hello
    if step >= 4:
        bases = (divak.Logger, divak.RequestTracker, server.Hello)
        handler = type("Handler", bases, {})
    if step == 0:
        return divak.Application([(r"/", handler)])

    class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
        def __init__(self, **settings: typing.Any) -> None:
            super().__init__([(r"/", handler)], **settings)
            self.set_divak_service("bench-divak")
            self.set_divak_sample_probability(0.001)
            self.add_divak_reporter(divak.ZipkinReporter(zipkin))
            if step >= 2:
                self.add_divak_propagator(divak.TraceContextPropagation())
                self.add_divak_propagator(divak.RequestIdPropagation())

    return Application(metrics=step >= 3)


def serve_once(variant: str, zipkin: str, requests: int, connections: int) -> float:
    """In this process: CPU µs per request of *variant* (after a warm-up)."""
    tree = pathlib.Path(os.environ.get("PYTHONPATH") or HERE.parent)
    sys.path.insert(0, str(tree / "bench"))
    sys.path.insert(0, str(tree))
    import server  # bench/server.py
    from tornado import httpserver, iostream

    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)  # noqa: SIM115
    server.configure_logging(log.name)
    base, _, _options = variant.partition("/")
    metrics = base.endswith("+m")
    probability = 0.001 if "0.1%" in base else 1.0
    if base == "plain":
        app = server.plain_app()
        http_server: typing.Any = httpserver.HTTPServer(app, xheaders=True)
    elif base.startswith("otel"):
        app = server.otel_app(zipkin, probability, metrics)[0]
        http_server = httpserver.HTTPServer(app, xheaders=True)
    elif base.startswith("ladder"):
        app = _ladder(server, zipkin, int(base[len("ladder"):]))
        from divak.lifecycle.server import DrainingHTTPServer

        http_server = DrainingHTTPServer(app, xheaders=True)
    else:
        from divak.lifecycle.server import DrainingHTTPServer

        app = server.divak_app(zipkin, probability, metrics)
        http_server = DrainingHTTPServer(app, xheaders=True)

    async def run(count: int) -> None:
        clients = []
        for _ in range(connections):
            ours, theirs = socket.socketpair()
            http_server.handle_stream(iostream.IOStream(ours), ("127.0.0.1", 40000))
            clients.append(iostream.IOStream(theirs))
        await asyncio.gather(*(_client(c, count // connections) for c in clients))
        for client in clients:
            client.close()

    asyncio.run(run(min(2000, requests)))  # warm-up
    if os.environ.get("BENCH_GC") == "off":
        gc.disable()
    elif os.environ.get("BENCH_GC") == "freeze":
        gc.collect()
        gc.freeze()
    started = time.process_time()
    asyncio.run(run(requests))
    elapsed = time.process_time() - started
    return 1e6 * elapsed / (requests // connections * connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--requests", type=int, default=16000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tree", default=str(HERE.parent),
        help="the project tree whose divak and bench/server.py to measure",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--zipkin", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figure = serve_once(args.one, args.zipkin, args.requests, args.connections)
        print(json.dumps(figure))
        return
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    collector = multiprocessing.Process(target=_collect, args=(queue,), daemon=True)
    collector.start()
    zipkin = f"http://127.0.0.1:{queue.get()}/api/v2/spans"
    env = {**os.environ, "PYTHONPATH": args.tree}
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    for round_number in range(args.rounds):
        for variant in args.variants:
            output = subprocess.run(
                [sys.executable, __file__, "--one", variant, "--zipkin", zipkin,
                 "--requests", str(args.requests),
                 "--connections", str(args.connections)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
            results[variant].append(json.loads(output.splitlines()[-1]))
            print(f"round {round_number + 1} {variant:<14} "
                  f"{results[variant][-1]:7.1f} CPU µs/request", flush=True)
    collector.terminate()
    plain = min(results["plain"]) if "plain" in results else None
    print(f"\n{'variant':<14} {'CPU µs/req':>10} {'Δ µs':>7}")
    for variant, figures in results.items():
        best = min(figures)
        delta = f"{best - plain:+7.1f}" if plain is not None else ""
        print(f"{variant:<14} {best:10.1f} {delta}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
