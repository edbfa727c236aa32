"""A real Zipkin v2 endpoint for tests: :class:`ZipkinCollector`.

Re-exported by :mod:`divak.testing.case`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing

from tornado import httpserver, netutil, web

__all__ = ["ZipkinCollector"]


class _SpansHandler(web.RequestHandler):
    def initialize(self, collector: ZipkinCollector) -> None:
        self.collector = collector

    def post(self) -> None:
        if self.collector.delay:
            time.sleep(self.collector.delay)  # a slow collector, on purpose
        spans = json.loads(self.request.body)
        self.collector.add(spans, dict(self.request.headers))
        self.set_status(202)


class ZipkinCollector:
    """A Zipkin v2 collector endpoint for tests: ``POST /api/v2/spans``.

    Runs a Tornado server on 127.0.0.1 in its own thread, so it keeps
    receiving while the test blocks or waits on subprocesses.  Use it as a
    context manager, or call :meth:`start` and :meth:`stop`.

    .. attribute:: spans

       :class:`list` of the span objects received (decoded JSON).

    .. attribute:: posts

       :class:`list` of ``(headers, spans)`` per upload.

    :param delay: seconds to wait before answering each upload
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.spans: list[dict[str, typing.Any]] = []
        self.posts: list[tuple[dict[str, str], list[dict[str, typing.Any]]]] = []
        self.port = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:{port}/api/v2``."""
        return f"http://127.0.0.1:{self.port}/api/v2"

    def add(self, spans: list[dict[str, typing.Any]], headers: dict[str, str]) -> None:
        """Record an upload (called by the HTTP handler)."""
        with self._lock:
            self.spans.extend(spans)
            self.posts.append((headers, spans))
            self._lock.notify_all()

    def start(self) -> ZipkinCollector:
        """Start listening on a free port of 127.0.0.1."""
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            app = web.Application(
                [(r"/api/v2/spans", _SpansHandler, {"collector": self})]
            )
            server = httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            loop.call_soon(ready.set)
            loop.run_forever()
            server.stop()
            loop.close()

        self._thread = threading.Thread(
            target=serve, name="zipkin-collector", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop the server thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ZipkinCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(
        self,
        predicate: typing.Callable[[list[dict[str, typing.Any]]], bool],
        timeout: float = 15.0,
    ) -> list[dict[str, typing.Any]]:
        """Wait until ``predicate(spans)`` is true; return the spans.

        :param predicate: called with the list of received spans
        :param timeout: seconds to wait at most
        :raises TimeoutError: when the predicate is still false
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"collector has {len(self.spans)} spans, condition unmet"
                    )
                self._lock.wait(remaining)
            return list(self.spans)

    def trace(self, trace_id: str) -> list[dict[str, typing.Any]]:
        """Return the received spans of one trace (32 hex digits)."""
        with self._lock:
            return [s for s in self.spans if s.get("traceId") == trace_id]
