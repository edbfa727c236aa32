"""Serve one Tornado application until it is stopped: :class:`Runner`.

The runner listens, runs the application's life-cycle callbacks, and on
SIGTERM or SIGINT drains: it stops accepting connections, flips readiness
to 503, closes idle keep-alive connections, closes WebSocket connections
with code 1001, lets in-flight requests finish and the WebSockets close
(bounded by ``shutdown_limit`` seconds, after which the requests and
connections still running are cut off), runs the shutdown callbacks
(bounded again), flushes the application's spans (bounded again) and
returns.  A second SIGTERM or
SIGINT exits at once.

With ``number_of_procs`` other than 1, :func:`run` binds the listening
sockets, forks the children and calls the application factory in each
child, so every child builds its own tracer provider and reporter threads.
The parent forwards SIGTERM/SIGINT to the children and exits after them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import threading
import time
import typing
import warnings

from tornado import httputil, ioloop, web

from divak.context import request_context_of
from divak.lifecycle.application import CallbackManager
from divak.lifecycle.process import (
    EXIT_FORCED,
    EXIT_START_FAILED,
    STOP_SIGNALS,
    flush_std_streams,
    raise_open_files_limit,
)
from divak.lifecycle.server import DrainingHTTPServer, bind_sockets
from divak.settings import number_setting, parse_bool, setting
from divak.tracing.recorder import Recorder
from divak.tracing.websocket import GOING_AWAY, WebSocketConnections

__all__ = ["Runner"]

logger = logging.getLogger("divak.runner")

#: Default of ``settings['header_timeout']``, in seconds.
HEADER_TIMEOUT = 10.0


class Runner:
    """Serve one application until SIGTERM or SIGINT, then drain.

    :param app: the application to serve; a
        :class:`~divak.CallbackManager` (a :class:`divak.Application`) gets
        its life-cycle callbacks run and its readiness flipped, a
        :class:`divak.Recorder` its spans flushed, any other
        :class:`tornado.web.Application` is served as it is
    :param before_run: extra ``callback(app, io_loop)`` run before serving
    :param on_start: extra ``callback(app, io_loop)`` spawned once serving
    :param shutdown: extra ``callback(app)`` run on shutdown
    :raises TypeError: when callbacks are given for an application that is
        not a :class:`~divak.CallbackManager`

    The application's settings ``xheaders`` (default :data:`True`),
    ``max_body_size``, ``max_buffer_size`` (bytes),
    ``idle_connection_timeout`` and ``body_timeout`` (seconds) configure the
    :class:`tornado.httpserver.HTTPServer`.  When it starts serving, the
    runner raises the process's soft limit of open files to the hard limit
    (see :func:`divak.lifecycle.process.raise_open_files_limit`).

    .. attribute:: header_timeout

       Seconds a request's headers may take to arrive, or :data:`None` for
       no limit (see :class:`~divak.lifecycle.server.DrainingHTTPServer`);
       ``settings['header_timeout']``, else the ``HEADER_TIMEOUT``
       environment variable, default 10; 0 turns the limit off.

    .. attribute:: shutdown_limit

       Seconds to wait for in-flight requests, then again for shutdown
       callbacks, then for the span flush; ``settings['shutdown_limit']``,
       default 5.

    .. attribute:: wait_timeout

       Seconds between progress checks while draining;
       ``settings['wait_timeout']``, default 1.

    .. attribute:: forced

       :data:`True` once a second signal cut the drain short.

    .. attribute:: cut_off

       The requests (:class:`tornado.httputil.HTTPServerRequest`) still
       running when ``shutdown_limit`` passed during the drain, whose
       connections the runner then closed; empty until then.

    .. attribute:: flush_abandoned

       :data:`True` when the span flush did not finish in time; the
       reporter thread may still be blocked on its collector.

    .. attribute:: gc_freeze

       :data:`True` (``settings['gc_freeze']``, default) to collect the
       garbage once and then :func:`gc.freeze` every object the start-up
       made, when the service becomes ready (after the ``on_start``
       callbacks).  The cyclic garbage collector then no longer walks the
       imported modules, classes and the application's long-lived objects
       in every full collection, which otherwise pauses all requests of
       the process for tens of milliseconds now and then (see
       :doc:`performance`).  Objects frozen are never collected, so a
       start-up object that becomes garbage in a reference cycle later
       stays in memory; :data:`False` turns it off.
    """

    def __init__(
        self,
        app: web.Application,
        before_run: list[typing.Callable[..., typing.Any]] | None = None,
        on_start: list[typing.Callable[..., typing.Any]] | None = None,
        shutdown: list[typing.Callable[..., typing.Any]] | None = None,
    ) -> None:
        self.application = app
        if before_run or on_start or shutdown:
            if not isinstance(app, CallbackManager):
                raise TypeError(
                    "callbacks need a divak.Application (a CallbackManager), "
                    f"not {type(app).__qualname__}"
                )
            app.before_run_callbacks.extend(before_run or ())
            app.on_start_callbacks.extend(on_start or ())
            app.on_shutdown_callbacks.extend(shutdown or ())
        self.shutdown_limit = number_setting(app.settings, "shutdown_limit", None, 5.0)
        self.wait_timeout = number_setting(app.settings, "wait_timeout", None, 1.0)
        header_timeout = number_setting(
            app.settings, "header_timeout", "HEADER_TIMEOUT", HEADER_TIMEOUT
        )
        self.header_timeout = header_timeout if header_timeout > 0 else None
        self.gc_freeze = parse_bool(
            setting(app.settings, "gc_freeze", None, True)[0], "settings['gc_freeze']"
        )
        self.server: DrainingHTTPServer | None = None
        self.forced = False
        self.cut_off: list[httputil.HTTPServerRequest] = []
        self.flush_abandoned = False
        self._stopping: asyncio.Event | None = None
        self._starting: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_server(self) -> DrainingHTTPServer:
        settings = self.application.settings
        return DrainingHTTPServer(
            self.application,
            xheaders=settings.get("xheaders", True),
            max_body_size=settings.get("max_body_size"),
            max_buffer_size=settings.get("max_buffer_size"),
            idle_connection_timeout=settings.get("idle_connection_timeout"),
            body_timeout=settings.get("body_timeout"),
            header_timeout=self.header_timeout,
        )

    def run(self, port_number: int, number_of_procs: int = 1) -> None:
        """Listen on *port_number* and serve until stopped, then drain.

        sprockets.http's entry point.  Forking here would hand the already
        built application to every child; use :func:`run` with a factory
        for several processes.

        :param port_number: TCP port to listen on (all interfaces, or
            ``settings['address']``)
        :param number_of_procs: must be 1
        :raises ValueError: when *number_of_procs* is not 1
        :raises SystemExit: with status 70 when a ``before_run`` callback
            fails, 1 after a second signal
        """
        if number_of_procs != 1:
            raise ValueError("Runner.run serves one process; use divak.run to fork")
        sockets = bind_sockets(port_number, _address(self.application.settings))
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve(sockets))
        finally:
            loop.close()
        if self.forced:
            raise SystemExit(EXIT_FORCED)

    async def serve(self, sockets: list[socket.socket]) -> None:
        """Serve on already bound *sockets* until SIGTERM/SIGINT, then drain.

        Must run on the thread that owns the signal handlers (the main
        thread).  Unblocks SIGTERM and SIGINT once its handlers are in
        place, so a signal that arrived during start-up is handled then.

        :param sockets: listening sockets, e.g. from
            :func:`tornado.netutil.bind_sockets`
        :raises SystemExit: with status 70 when the application's ``start``
            (its ``before_run`` callbacks) raises
        """
        await self._start(sockets, asyncio.get_running_loop())
        await self._wait_and_drain()

    def start_server(self, port_number: int, number_of_procs: int = 1) -> None:
        """Start serving on the current IOLoop, which the caller then starts.

        sprockets.http's two-step API: the ``before_run`` callbacks run
        here; on SIGTERM/SIGINT (or :meth:`stop_server`) the runner drains
        and stops the IOLoop.

        :param port_number: TCP port to listen on
        :param number_of_procs: must be 1; use :func:`run` to fork
        :raises ValueError: when *number_of_procs* is not 1
        :raises SystemExit: with status 70 when a ``before_run`` callback
            fails
        """
        if number_of_procs != 1:
            raise ValueError("Runner serves one process; use divak.run to fork")
        sockets = bind_sockets(port_number, _address(self.application.settings))
        io_loop = ioloop.IOLoop.current()
        loop = io_loop.asyncio_loop  # type: ignore[attr-defined]
        # The loop is not running yet: run the before_run callbacks now, so
        # a failure exits here as sprockets.http does.
        io_loop.run_sync(lambda: self._run_before_run(sockets, io_loop))

        async def serve_then_stop() -> None:
            try:
                await self._start(sockets, loop, before_run=False)
                await self._wait_and_drain()
            finally:
                io_loop.stop()

        io_loop.add_callback(serve_then_stop)

    def stop_server(self) -> None:
        """Start the drain, as SIGTERM does; call it on the IOLoop's thread.

        sprockets.http's name.  Before serving started it does nothing.
        """
        if self._stopping is not None:
            self._stopping.set()

    async def _run_before_run(
        self, sockets: list[socket.socket], io_loop: ioloop.IOLoop
    ) -> None:
        app = self.application
        if not isinstance(app, CallbackManager):
            return
        try:
            await app.run_before_run_callbacks(io_loop)
        except Exception:
            logger.critical("application failed to start, exiting")
            for sock in sockets:
                sock.close()
            raise SystemExit(EXIT_START_FAILED) from None

    async def _start(
        self,
        sockets: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        before_run: bool = True,
    ) -> None:
        io_loop = ioloop.IOLoop.current()
        self._stopping = asyncio.Event()
        if before_run:
            await self._run_before_run(sockets, io_loop)
        if isinstance(self.application, Recorder):
            self.application.divak_instrumentation.spans_go_to_log()
        raise_open_files_limit()
        self.server = self._make_server()
        self.server.add_sockets(sockets)
        self._loop = loop
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        logger.info("serving on %s (pid %d)", _describe(sockets), os.getpid())
        if isinstance(self.application, CallbackManager):
            self._starting = asyncio.ensure_future(
                self._on_start(self.application, io_loop)
            )
        else:
            self._freeze_start_up()

    async def _on_start(self, app: CallbackManager, io_loop: ioloop.IOLoop) -> None:
        finished = await app.run_on_start_callbacks(io_loop)
        self._freeze_start_up()
        if not finished:
            logger.error("on_start callbacks did not finish, not ready to serve")
        elif not app.owns_readiness and not app.draining:
            app.ready_to_serve.set()
            logger.info("ready to serve")

    def _freeze_start_up(self) -> None:
        """Collect the garbage, then freeze what start-up made (:attr:`gc_freeze`)."""
        if self.gc_freeze:
            gc.collect()
            gc.freeze()

    async def _wait_and_drain(self) -> None:
        assert self._stopping is not None and self._loop is not None
        try:
            await self._stopping.wait()
            await self.drain()
        finally:
            for signum in STOP_SIGNALS:
                self._loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        assert self._stopping is not None
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            logger.warning("second %s, exiting now", name)
            self.forced = True
            flush_std_streams()
            os._exit(EXIT_FORCED)
        logger.info("%s received, stopping", name)
        self._stopping.set()

    def stop(self) -> None:
        """Deprecated: :meth:`stop_server`, sprockets.http's name, does the same.

        :deprecated: warns :class:`DeprecationWarning`; call
            :meth:`stop_server`
        """
        warnings.warn(
            "Runner.stop is deprecated, call Runner.stop_server",
            DeprecationWarning,
            stacklevel=2,
        )
        self.stop_server()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight work, run callbacks, flush spans.

        1. close the listening sockets (new connections are refused) and
           set the application's ``draining`` flag (``/status`` answers
           503); a ``ready_to_serve`` event the runner set is cleared, one
           the application owns is left alone;
        2. close idle keep-alive connections, and send every open
           WebSocket connection of a :class:`divak.Recorder` application a
           close frame with code ``1001`` (going away; see
           :mod:`divak.tracing.websocket`);
        3. wait up to :attr:`shutdown_limit` seconds for in-flight requests
           (they answer with ``Connection: close``) and for the WebSocket
           connections to close (their spans end then), then cut off the
           requests still running (:attr:`cut_off`, one WARNING line with
           their number) and the WebSocket connections still open, and
           close whatever connection is left;
        4. run the shutdown callbacks, bounded by :attr:`shutdown_limit`;
        5. flush and stop the span reporters off the IOLoop, bounded by
           :attr:`shutdown_limit`.
        """
        app = self.application
        started = time.monotonic()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # on_start callbacks still running
        if isinstance(app, CallbackManager):
            app.start_draining()
        assert self.server is not None
        server = self.server
        closed = server.start_draining()
        websockets = app.divak_websockets if isinstance(app, Recorder) else None
        closing = 0
        if websockets is not None:
            closing = websockets.close_all(GOING_AWAY, "server shutting down")
        logger.info(
            "draining: not accepting, closed %d idle connection(s), "
            "%d request(s) in flight%s",
            closed,
            len(server.busy),
            f", closing {closing} WebSocket connection(s)" if closing else "",
        )
        deadline = started + self.shutdown_limit
        cut_off = 0
        while not (
            server.drained.is_set() and (websockets is None or not len(websockets))
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                cut_off = self._cut_off(server)
                if websockets is not None:
                    await self._cut_off_websockets(websockets)
                break
            logger.debug("waiting for %d request(s) in flight", len(server.busy))
            try:
                await asyncio.wait_for(
                    _drained(server, websockets), min(remaining, self.wait_timeout)
                )
            except TimeoutError:
                pass
        try:
            await asyncio.wait_for(server.close_all_connections(), 1.0)
        except TimeoutError:  # pragma: no cover - defensive
            logger.warning("connections did not close in time")
        if isinstance(app, CallbackManager):
            await app.run_shutdown_callbacks(self.shutdown_limit)
        await self.flush_spans()
        logger.info(
            "stopped after %.3fs%s",
            time.monotonic() - started,
            f", {cut_off} request(s) cut off by shutdown" if cut_off else "",
        )

    def _cut_off(self, server: DrainingHTTPServer) -> int:
        """``shutdown_limit`` passed: cut off the requests still running.

        Records them in :attr:`cut_off` and logs how many there are; the
        drain closes their connections next.  Returns their number.
        """
        self.cut_off = server.in_flight_requests()
        described = [_describe_request(request) for request in self.cut_off[:5]]
        if len(self.cut_off) > 5:
            described.append("...")
        logger.warning(
            "shutdown_limit of %.1fs passed with %d request(s) in flight: "
            "cutting them off%s",
            self.shutdown_limit,
            len(server.busy),
            f" ({', '.join(described)})" if described else "",
        )
        return len(server.busy)

    async def _cut_off_websockets(self, websockets: WebSocketConnections) -> None:
        """``shutdown_limit`` passed: close the WebSocket connections still open.

        Their sockets are closed without waiting for the peer; their spans
        end once Tornado noticed (waited for up to a second).
        """
        count = websockets.abort_all()
        if not count:
            return
        logger.warning(
            "shutdown_limit of %.1fs passed with %d WebSocket connection(s) open: "
            "cutting them off",
            self.shutdown_limit,
            count,
        )
        try:
            await asyncio.wait_for(websockets.wait_closed(), 1.0)
        except TimeoutError:  # pragma: no cover - defensive
            logger.warning("WebSocket connections did not close in time")

    async def flush_spans(self) -> None:
        """Flush and shut down the application's reporters, off the IOLoop.

        Runs :meth:`divak.Recorder.divak_shutdown` in a separate thread,
        bounded by :attr:`shutdown_limit` seconds: every queued span gets
        one upload attempt, without the retries a running service makes, so
        a collector that is down does not hold the exit up.  Spans still
        queued at the limit are lost (and a warning is logged).  Does
        nothing for applications that are not a :class:`divak.Recorder`.
        """
        app = self.application
        if not isinstance(app, Recorder):
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        limit = self.shutdown_limit

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                app.divak_shutdown()
            except Exception:  # pragma: no cover - defensive
                logger.exception("flushing spans failed")
            finally:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(finish)

        threading.Thread(target=work, name="divak-flush", daemon=True).start()
        try:
            await asyncio.wait_for(done, limit)
        except TimeoutError:
            self.flush_abandoned = True
            logger.warning("spans not flushed within %.1fs, dropping them", limit)


async def _drained(
    server: DrainingHTTPServer, websockets: WebSocketConnections | None
) -> None:
    """Return once no request is in flight and no WebSocket connection open."""
    await server.drained.wait()
    if websockets is not None:
        await websockets.wait_closed()


def _address(settings: typing.Mapping[str, typing.Any]) -> str | None:
    """``settings['address']``, else ``ADDRESS``, else all interfaces."""
    return setting(settings, "address", "ADDRESS", None)[0] or None


def _describe_request(request: httputil.HTTPServerRequest) -> str:
    """``GET /items/{item_id}``: the method and route, never the raw path."""
    request_context = request_context_of(request)
    route = request_context.route if request_context is not None else None
    return f"{request.method} {route}" if route else str(request.method)


def _describe(sockets: list[socket.socket]) -> str:
    """``port 8000`` or ``127.0.0.1:8000``: each port once."""
    addresses = sorted({sock.getsockname()[:2] for sock in sockets})
    ports = sorted({port for _, port in addresses})
    hosts = {host for host, _ in addresses}
    if hosts <= {"0.0.0.0", "::"}:
        return "port " + ",".join(map(str, ports))
    return ",".join(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for host, port in addresses
    )

