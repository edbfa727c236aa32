"""Slowloris against a divak service: is a fresh client still answered?

Run from the project root::

    python3 bench/slowloris.py                     # both scenarios, 1,100 connections
    python3 bench/slowloris.py --connections 2000 --seconds 30

Starts a small service with :func:`divak.run` in its own process, with a
soft open-files limit (``RLIMIT_NOFILE``) of 1,024, the usual default, and
its log on standard output redirected to a file.  Then opens the
connections, each sending the start of a request's headers and one more
header line every ``--trickle`` seconds, never the blank line that ends
them.  Once they are open, a fresh client asks for ``/status``.  Two
scenarios:

``raise``
   the hard limit is the machine's: the service may raise its soft limit;
``capped``
   the hard limit is 1,024 too: the service runs out of descriptors, and
   only closing slow connections frees them.

For each scenario the table shows the seconds until the fresh client got
its answer (``-`` when it got none within ``--seconds``), the log's size
and lines at the end of the window, and how many slow connections the
service closed within it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

SERVICE = """
import divak
from tornado import web

class Hello(web.RequestHandler):
    def get(self):
        self.write({"message": "hello, world"})

def make_app(**settings):
    app = divak.Application(
        [(r"/", Hello), (r"/status", divak.StatusHandler)], **settings
    )
    return app

divak.run(make_app)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_service(
    port: int, log_path: pathlib.Path, soft: int, hard: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The service, with *soft*/*hard* open-files limits, logging to *log_path*."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVICE],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "PORT": str(port),
                "ADDRESS": "127.0.0.1",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"service did not start: {log_path.read_text()}"
                ) from None
            time.sleep(0.05)


class Slowloris:
    """Connections that send headers, a line at a time, and never end them."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets: list[socket.socket] = []
        self.failed = 0
        self.closed_by_server = 0
        self.selector = selectors.DefaultSelector()
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n")
            except OSError:
                self.failed += 1
                continue
            sock.setblocking(False)
            self.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_READ)

    def trickle(self) -> None:
        """One more header line on every connection still open."""
        for sock in list(self.sockets):
            try:
                sock.send(b"X-Slow: 1\r\n")
            except OSError:
                self._closed(sock)

    def watch(self, seconds: float) -> None:
        """Count the connections the server closes during *seconds*."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(remaining):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        if sock in self.sockets:
            self.sockets.remove(sock)
            self.selector.unregister(sock)
            sock.close()
            self.closed_by_server += 1

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.selector.close()


def fresh_client(port: int, timeout: float, result: list[float]) -> None:
    """Ask for ``/status``; append the seconds until the answer to *result*."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/status", timeout=timeout
        ) as response:
            response.read()
    except OSError:
        return
    result.append(time.monotonic() - started)


def scenario(
    name: str, soft: int, hard: int, arguments: argparse.Namespace
) -> dict[str, str]:
    port = free_port()
    env = {}
    if arguments.header_timeout is not None:
        env["HEADER_TIMEOUT"] = str(arguments.header_timeout)
    with tempfile.TemporaryDirectory() as directory:
        log_path = pathlib.Path(directory) / "service.log"
        process = start_service(port, log_path, soft, hard, env)
        attack = Slowloris(port, arguments.connections)
        answered: list[float] = []
        client = threading.Thread(
            target=fresh_client, args=(port, arguments.seconds, answered)
        )
        started = time.monotonic()
        client.start()
        while (elapsed := time.monotonic() - started) < arguments.seconds:
            attack.watch(min(arguments.trickle, arguments.seconds - elapsed))
            attack.trickle()
        size = log_path.stat().st_size
        with open(log_path, "rb") as log:
            lines = sum(1 for _ in log)
        client.join()
        attack.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {
        "scenario": name,
        "limits": f"{soft}/{hard}",
        "open": str(arguments.connections - attack.failed),
        "answer s": f"{answered[0]:.2f}" if answered else "-",
        "log KiB": f"{size / 1024:.0f}",
        "log lines": str(lines),
        "closed": str(attack.closed_by_server),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--soft-limit", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--trickle", type=float, default=2.0)
    parser.add_argument(
        "--header-timeout", type=float, help="HEADER_TIMEOUT for the service"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["raise", "capped"],
        choices=["raise", "capped"],
    )
    arguments = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = arguments.connections + 64
    if soft < needed:  # this process holds every slow connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))
    limits = {
        "raise": (arguments.soft_limit, hard),
        "capped": (arguments.soft_limit, arguments.soft_limit),
    }
    rows = [scenario(name, *limits[name], arguments) for name in arguments.scenarios]
    widths = {
        column: max(len(column), *(len(row[column]) for row in rows))
        for column in rows[0]
    }
    print("  ".join(column.ljust(width) for column, width in widths.items()))
    for row in rows:
        print("  ".join(row[column].ljust(width) for column, width in widths.items()))


if __name__ == "__main__":
    main()
