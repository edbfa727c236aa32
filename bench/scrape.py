"""What a Prometheus scrape of a big registry costs the requests around it.

Run from the project root::

    python3 bench/scrape.py                     # 2,000 series, 10 s per phase
    python3 bench/scrape.py --series 4000 --duration 20
    python3 bench/scrape.py --distinct-names    # one attribute name per series
    python3 bench/scrape.py --tree ../other     # another checkout's divak

Starts a divak service (``--serve``, this same file) on 127.0.0.1 whose
metrics already hold ``--series`` attribute sets: half histogram series
(``record_value``), half counter series (``count_event``), each set told
apart by the value of one attribute, or with ``--distinct-names`` by the
attribute's *name* (the case where every series of a family has its own
label).  Then, from this process:

1. ``scrape``: 10 scrapes of ``/metrics`` one after the other, nothing
   else running: the time of one scrape (median and max, ms) and the size
   of the answer;
2. ``idle``: ``--connections`` keep-alive connections send ``GET /`` back
   to back for ``--duration`` seconds: requests per second, p50 and p99
   latency (ms);
3. ``scraped``: the same load while one more connection scrapes
   ``/metrics`` in a loop: the same figures, and the number of scrapes.

Prints one table.  The service is not pinned to a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import time
import typing
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


# -- the service ------------------------------------------------------------
def serve(port: int, series: int, distinct_names: bool) -> None:
    """Serve ``/`` and ``/metrics`` on 127.0.0.1:*port* until SIGTERM."""
    from tornado import web

    import divak

    class Hello(divak.RequestTracker, web.RequestHandler):
        def get(self) -> None:
            self.write({"message": "hello, world"})

    class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
        def __init__(self, **settings: typing.Any) -> None:
            routes = [(r"/", Hello), (r"/metrics", divak.MetricsHandler)]
            super().__init__(routes, **settings)
            self.set_divak_service("bench-scrape")
            self.set_divak_sample_probability(0.0)
            metrics = self.divak_metrics
            for index in range(series // 2):
                name = f"item_{index}" if distinct_names else "item"
                value = "x" if distinct_names else str(index)
                attributes = {name: value}
                seconds = 0.01 * (index % 50)
                metrics.record_value("bench.latency", seconds, "s", attributes)
                metrics.count_event("bench.event", 1 + index % 3, attributes)

    divak.run(
        Application,
        {"port": port, "address": "127.0.0.1", "number_of_procs": 1},
        {"version": 1, "root": {"level": "WARNING"}},
    )


# -- the driver -------------------------------------------------------------
async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[bytes, int]:
    """Send *request* on a keep-alive connection; the status line and body size."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0], length


def request_bytes(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def scrape_times(port: int, times: int) -> tuple[list[float], int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seconds: list[float] = []
    size = 0
    try:
        for _ in range(times):
            started = time.perf_counter()
            status, size = await exchange(
                reader, writer, request_bytes("/metrics", port)
            )
            seconds.append(time.perf_counter() - started)
            assert status.endswith(b" 200 OK"), status
    finally:
        writer.close()
    return seconds, size


async def load(
    port: int, connections: int, duration: float, scrape: bool
) -> dict[str, typing.Any]:
    deadline = time.monotonic() + duration
    latencies: list[float] = []
    errors = [0]
    scrapes = [0]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = request_bytes("/", port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status, _ = await exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                if not status.endswith(b" 200 OK"):
                    errors[0] += 1
        finally:
            writer.close()

    async def scraper() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = request_bytes("/metrics", port)
        try:
            while time.monotonic() < deadline:
                await exchange(reader, writer, request)
                scrapes[0] += 1
        finally:
            writer.close()

    tasks = [worker() for _ in range(connections)]
    if scrape:
        tasks.append(scraper())
    started = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "max": latencies[-1] * 1000,
        "errors": errors[0],
        "scrapes": scrapes[0],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--distinct-names", action="store_true")
    parser.add_argument(
        "--tree",
        default=str(ROOT),
        help="the source tree whose divak the service imports (default: this one)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.series, args.distinct_names)
        return
    port = free_port()
    command = [sys.executable, str(HERE / "scrape.py"), "--serve", str(port)]
    command += ["--series", str(args.series)]
    if args.distinct_names:
        command.append("--distinct-names")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.tree)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until_up(port, process)
        seconds, size = asyncio.run(scrape_times(port, 10))
        idle = asyncio.run(load(port, args.connections, args.duration, False))
        scraped = asyncio.run(load(port, args.connections, args.duration, True))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    names = "distinct attribute names" if args.distinct_names else "one attribute name"
    print(f"{args.series} series ({names}), answer {size / 1024:.0f} KiB")
    print(
        f"one scrape: median {statistics.median(seconds) * 1000:.0f} ms,"
        f" max {max(seconds) * 1000:.0f} ms"
    )
    header = ("phase", "req/s", "p50 ms", "p99 ms", "max ms")
    print("{:8}  {:>6}  {:>7}  {:>7}  {:>7}  scrapes".format(*header))
    for phase, row in (("idle", idle), ("scraped", scraped)):
        print(
            f"{phase:8}  {row['rps']:6.0f}  {row['p50']:7.1f}  {row['p99']:7.1f}"
            f"  {row['max']:7.1f}  {row['scrapes']}"
        )
    print(json.dumps({"scrape_ms": [round(s * 1000, 1) for s in seconds]}))


if __name__ == "__main__":
    main()
