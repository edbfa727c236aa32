"""Shared fixtures: a real Zipkin endpoint and real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import socket
import subprocess
import sys
import time
import typing
import urllib.request

import pytest

import divak
from divak.testing import RecordingLogHandler, ZipkinCollector

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def collector() -> typing.Iterator[ZipkinCollector]:
    """A real Zipkin v2 endpoint in a thread of the test process."""
    with ZipkinCollector() as running:
        yield running


@pytest.fixture
def log_records() -> typing.Iterator[list[logging.LogRecord]]:
    """Every log record written during the test, from any logger."""
    handler = RecordingLogHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


class ThreadedServer:
    """A Tornado application served on 127.0.0.1 from a thread of its own.

    For fake collectors that must answer while the test's own loop blocks.
    """

    def __init__(self, app: typing.Any) -> None:
        import threading

        from tornado import httpserver, netutil

        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            server = httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()
            server.stop()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Applications served by :func:`listen` during the current test.
_SERVED: list[typing.Any] = []


@pytest.fixture(autouse=True)
def _shut_down_served_apps() -> typing.Iterator[None]:
    """Stop the span export threads of every app a test served with listen()."""
    yield
    while _SERVED:
        shutdown = getattr(_SERVED.pop(), "divak_shutdown", None)
        if shutdown is not None:
            shutdown()


def listen(app: typing.Any) -> int:
    """Serve *app* on a free port of 127.0.0.1 in the running loop; return the port.

    The app's reporters are shut down at the end of the test.
    """
    server = app.listen(0, "127.0.0.1")
    app._test_server = server
    _SERVED.append(app)
    return next(iter(server._sockets.values())).getsockname()[1]


async def flush(*apps: divak.Recorder) -> None:
    """Export every finished span of *apps* now (off the loop)."""
    loop = asyncio.get_running_loop()
    for app in apps:
        assert await loop.run_in_executor(None, app.divak_force_flush, 10.0)


def run(coro: typing.Awaitable[typing.Any]) -> typing.Any:
    """Run *coro* on a fresh loop (tests are plain functions)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def start_service(
    args: list[str], env: dict[str, str] | None = None, port: int | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start a service in a subprocess and wait until it answers on ``/status``."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_port(port, process)
    return process, port


def wait_for_port(port: int, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"service exited with {process.returncode}: {process.stdout.read()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
