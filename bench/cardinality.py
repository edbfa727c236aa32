"""What hostile input costs a service's metrics: memory and series.

Run from the project root::

    python3 bench/cardinality.py
    python3 bench/cardinality.py --tree ../other   # another checkout's divak

Starts a divak service (``--serve``, this same file) on 127.0.0.1, traces
sampled at 0 so that only metrics keep anything, and measures its RSS
(``VmRSS``) and the series of its ``/metrics`` answer:

1. ``start``: after one ``GET`` and one scrape;
2. ``methods``: after ``--methods`` requests whose methods are random
   tokens of 10 to 60 KB (Tornado answers them 405);
3. ``operations``: after ``--operations`` requests whose handler records
   an operation with a distinct 30 KB name;
4. ``real``: after a ``GET`` of a route not asked for before: is its series
   there, or was it recorded as ``otel.metric.overflow``?

Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import signal
import socket
import string
import subprocess
import sys
import time
import typing
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
_TCHAR = string.ascii_uppercase + string.digits + "-_.!~"


# -- the service ------------------------------------------------------------
def serve(port: int) -> None:
    """Serve ``/items/1``, ``/later``, ``/operation`` and ``/metrics`` until SIGTERM."""
    from tornado import web

    import divak

    class Item(divak.RequestTracker, web.RequestHandler):
        def get(self) -> None:
            self.write("item")

    class Operation(divak.RequestTracker, web.RequestHandler):
        def get(self) -> None:
            index = self.get_argument("i")
            name = f"op-{index}-" + "x" * int(self.get_argument("length"))
            with self.record_operation(name):
                pass
            self.write("ok")

    class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
        def __init__(self, **settings: typing.Any) -> None:
            routes = [
                (r"/items/1", Item),
                (r"/later", Item),
                (r"/operation", Operation),
                (r"/metrics", divak.MetricsHandler),
            ]
            super().__init__(routes, **settings)
            self.set_divak_service("bench-cardinality")
            self.set_divak_sample_probability(0.0)

    divak.run(
        Application,
        {"port": port, "address": "127.0.0.1", "number_of_procs": 1},
        {"version": 1, "root": {"level": "ERROR"}},
    )


# -- the driver -------------------------------------------------------------
def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def series(port: int) -> tuple[int, bool, bool]:
    """Samples in a scrape; is ``GET /later`` among them; any overflow?"""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=120) as response:
        text = response.read().decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    real = any(
        line.startswith("http_server_request_duration_seconds_count{")
        and 'http_request_method="GET"' in line
        and 'http_route="/later"' in line
        for line in lines
    )
    return len(lines), real, "otel_metric_overflow" in text


async def send(port: int, requests: list[bytes], connections: int = 4) -> None:
    async def one(part: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in part:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
        finally:
            writer.close()

    await asyncio.gather(*(one(requests[i::connections]) for i in range(connections)))


def get(port: int, path: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60):
        pass


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
            return get(port, "/items/1")
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", type=int, default=2000)
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument(
        "--tree",
        default=str(ROOT),
        help="the source tree whose divak the service imports (default: this one)",
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.tree)}
    process = subprocess.Popen(
        [sys.executable, str(HERE / "cardinality.py"), "--serve", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    rows = []
    try:
        wait_until_up(port, process)
        rows.append(("start", rss_mib(process.pid), *series(port)))
        rng = random.Random(1)
        methods = [
            "".join(rng.choices(_TCHAR, k=rng.randint(10_000, 60_000)))
            for _ in range(args.methods)
        ]
        asyncio.run(
            send(
                port,
                [f"{m} /items/1 HTTP/1.1\r\nHost: x\r\n\r\n".encode() for m in methods],
            )
        )
        rows.append(("methods", rss_mib(process.pid), *series(port)))
        operations = [
            f"GET /operation?i={i}&length=30000 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            for i in range(args.operations)
        ]
        asyncio.run(send(port, operations))
        rows.append(("operations", rss_mib(process.pid), *series(port)))
        get(port, "/later")
        rows.append(("real", rss_mib(process.pid), *series(port)))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    print(f"{'after':10}  {'RSS MiB':>7}  {'samples':>7}  real series  overflow")
    for phase, rss, count, real, overflow in rows:
        print(f"{phase:10}  {rss:7.0f}  {count:7d}  {str(real):11}  {overflow}")


if __name__ == "__main__":
    main()
