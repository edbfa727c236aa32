"""Run a Tornado application as a service: :func:`run` and :class:`Runner`.

The runner listens, runs the application's life-cycle callbacks, and on
SIGTERM or SIGINT drains: it stops accepting connections, closes idle
keep-alive connections, lets in-flight requests finish (bounded by
``shutdown_limit`` seconds), runs the shutdown callbacks, flushes the
application's spans and returns.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import signal
import socket
import threading
import typing

from tornado import httpserver, httputil, ioloop, netutil, web

from divak import logging as divak_logging

__all__ = ["Runner", "run", "parse_bool"]

logger = logging.getLogger(__name__)

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f", ""})


def parse_bool(value: str | bool | int | None, name: str = "value") -> bool:
    """Read a boolean the way people write it in the environment.

    :param value: ``1``/``0``, ``true``/``false``, ``yes``/``no``,
        ``on``/``off`` in any case, or a :class:`bool`; :data:`None` is false
    :param name: what the value is, for the error message
    :raises ValueError: for anything else
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return value != 0
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, not {value!r}")


class _ActivityDelegate(httputil.HTTPMessageDelegate):
    """Marks a connection busy from request headers until its next request."""

    __slots__ = ("server", "connection", "delegate")

    def __init__(
        self,
        server: _DrainingServer,
        connection: object,
        delegate: httputil.HTTPMessageDelegate,
    ) -> None:
        self.server = server
        self.connection = connection
        self.delegate = delegate

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> typing.Awaitable[None] | None:
        self.server.busy.add(self.connection)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> typing.Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class _DrainingServer(httpserver.HTTPServer):
    """An HTTPServer that knows which connections are idle and can drain."""

    def initialize(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().initialize(*args, **kwargs)
        self.connections: set[typing.Any] = set()
        self.busy: set[typing.Any] = set()
        self.draining = False
        self.drained = asyncio.Event()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        self.connections.add(server_conn)
        self.busy.discard(server_conn)
        if self.draining:
            self._close(server_conn)
        delegate = super().start_request(server_conn, request_conn)
        return _ActivityDelegate(self, server_conn, delegate)

    def on_close(self, server_conn: object) -> None:
        self.connections.discard(server_conn)
        self.busy.discard(server_conn)
        self._check_drained()
        super().on_close(server_conn)

    def _close(self, server_conn: typing.Any) -> None:
        server_conn.stream.close()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self.busy:
            self.drained.set()

    def start_draining(self) -> None:
        """Stop accepting, close idle connections, signal when none is busy."""
        self.stop()
        self.draining = True
        for connection in list(self.connections - self.busy):
            self._close(connection)
        self._check_drained()


class Runner:
    """Serve one application until SIGTERM or SIGINT, then drain.

    :param app: the application to serve; a :class:`divak.Application`
        gets its life-cycle callbacks run, a :class:`divak.Recorder` its
        spans flushed, any other :class:`tornado.web.Application` is served
        as it is
    :param before_run: extra ``callback(app, io_loop)`` run before serving
    :param on_start: extra ``callback(app, io_loop)`` spawned once serving
    :param shutdown: extra ``callback(app)`` run on shutdown

    .. attribute:: shutdown_limit

       Seconds to wait for in-flight requests, then again for shutdown
       callbacks, then for the span flush; ``settings['shutdown_limit']``,
       default 5.
    """

    def __init__(
        self,
        app: web.Application,
        before_run: list[typing.Callable[..., typing.Any]] | None = None,
        on_start: list[typing.Callable[..., typing.Any]] | None = None,
        shutdown: list[typing.Callable[..., typing.Any]] | None = None,
    ) -> None:
        self.application = app
        for name, extra in (
            ("before_run_callbacks", before_run),
            ("on_start_callbacks", on_start),
            ("on_shutdown_callbacks", shutdown),
        ):
            if extra:
                getattr(app, name).extend(extra)
        self.shutdown_limit = float(app.settings.get("shutdown_limit", 5.0))
        self.wait_timeout = float(app.settings.get("wait_timeout", 0.1))
        self.server: _DrainingServer | None = None
        self._stopping: asyncio.Event | None = None

    def _make_server(self) -> _DrainingServer:
        settings = self.application.settings
        return _DrainingServer(
            self.application,
            xheaders=settings.get("xheaders", True),
            max_body_size=settings.get("max_body_size"),
            max_buffer_size=settings.get("max_buffer_size"),
        )

    def run(self, port_number: int, number_of_procs: int = 1) -> None:
        """Listen on *port_number* and serve until stopped, then drain.

        :param port_number: TCP port to listen on (all interfaces, or
            ``settings['address']``)
        :param number_of_procs: must be 1 here; :func:`run` forks
        :raises SystemExit: with status 70 when a ``before_run`` callback
            fails
        """
        sockets = _bind(port_number, self.application.settings.get("address"))
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve(sockets))
        finally:
            loop.close()

    async def serve(self, sockets: list[socket.socket]) -> None:
        """Serve on already bound *sockets* until SIGTERM/SIGINT, then drain."""
        loop = asyncio.get_running_loop()
        io_loop = ioloop.IOLoop.current()
        self._stopping = asyncio.Event()
        start = getattr(self.application, "start", None)
        if start is not None:
            try:
                start(io_loop)
            except Exception:
                logger.critical("application failed to start, exiting")
                for sock in sockets:
                    sock.close()
                raise SystemExit(70) from None
        self.server = self._make_server()
        self.server.add_sockets(sockets)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        ready = getattr(self.application, "ready_to_serve", None)
        if ready is not None:
            ready.set()
        logger.info(
            "serving on port %s (pid %d)",
            ",".join(str(s.getsockname()[1]) for s in sockets),
            os.getpid(),
        )
        await self._stopping.wait()
        await self.drain()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        assert self._stopping is not None
        if self._stopping.is_set():
            logger.warning("second %s, exiting now", signal.Signals(signum).name)
            os._exit(1)
        logger.info("%s received, draining", signal.Signals(signum).name)
        self._stopping.set()

    def stop(self) -> None:
        """Start the drain, as SIGTERM does; safe to call from the IOLoop."""
        if self._stopping is not None:
            self._stopping.set()

    async def drain(self) -> None:
        """Stop accepting, finish in-flight work, run callbacks, flush spans."""
        app = self.application
        if hasattr(app, "ready_to_serve"):
            app.ready_to_serve.clear()
            app.draining = True  # type: ignore[attr-defined]
        assert self.server is not None
        self.server.start_draining()
        try:
            await asyncio.wait_for(self.server.drained.wait(), self.shutdown_limit)
        except TimeoutError:
            logger.warning(
                "%d request(s) still in flight after %.1fs, closing",
                len(self.server.busy),
                self.shutdown_limit,
            )
        run_callbacks = getattr(app, "run_shutdown_callbacks", None)
        if run_callbacks is not None:
            await run_callbacks(self.shutdown_limit)
        try:
            await asyncio.wait_for(self.server.close_all_connections(), 1.0)
        except TimeoutError:  # pragma: no cover - defensive
            logger.warning("connections did not close in time")
        await self.flush_spans()
        logger.info("stopped")

    async def flush_spans(self) -> None:
        """Flush and shut down the application's reporters, off the IOLoop.

        Bounded by :attr:`shutdown_limit` seconds; spans still queued then
        are lost (and logged).
        """
        shutdown = getattr(self.application, "divak_shutdown", None)
        if shutdown is None:
            return
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def work() -> None:
            try:
                shutdown()
            except Exception:  # pragma: no cover - defensive
                logger.exception("flushing spans failed")
            finally:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        threading.Thread(target=work, name="divak-flush", daemon=True).start()
        try:
            await asyncio.wait_for(done, self.shutdown_limit)
        except TimeoutError:
            logger.warning(
                "spans not flushed within %.1fs, dropping them", self.shutdown_limit
            )


def _bind(port: int, address: str | None) -> list[socket.socket]:
    # bind_sockets sets SO_REUSEADDR, so a restart never hits "address in use".
    return netutil.bind_sockets(port, address=address)


def _configure_logging(log_config: dict[str, typing.Any] | None, debug: bool) -> None:
    if log_config is not None:
        logging.config.dictConfig(log_config)
    elif not logging.getLogger().handlers:
        logging.config.dictConfig(divak_logging.default_logging_config(debug))


def run(
    create_application: typing.Callable[..., web.Application],
    settings: dict[str, typing.Any] | None = None,
    log_config: dict[str, typing.Any] | None = None,
) -> None:
    """Build the application, serve it, drain on SIGTERM/SIGINT, return.

    :param create_application: called with the settings as keyword
        arguments; an application class works as it is
    :param settings: application settings; the keys below are read here
        and every key is passed on to *create_application*
    :param log_config: a :func:`logging.config.dictConfig` dictionary.
        Without it, and only when the root logger has no handlers yet,
        divak applies :func:`divak.logging.default_logging_config`.

    .. rubric:: settings['port']

    The TCP port; default the ``PORT`` environment variable, else 8000.

    .. rubric:: settings['debug']

    Tornado's debug mode (autoreload, tracebacks); default the ``DEBUG``
    environment variable, which accepts 1/0, true/false, yes/no.

    .. rubric:: settings['shutdown_limit']

    Seconds to wait for in-flight requests on SIGTERM (then again for the
    shutdown callbacks and the span flush); default 5.

    .. rubric:: settings['xheaders']

    Trust ``X-Real-Ip``/``X-Forwarded-For`` for the client address;
    default :data:`True` (services run behind a load balancer).
    """
    app_settings = dict(settings or {})
    if "debug" in app_settings:
        debug = parse_bool(app_settings["debug"], "debug")
    else:
        debug = parse_bool(os.environ.get("DEBUG"), "DEBUG")
    app_settings["debug"] = debug
    port = int(app_settings.pop("port", None) or os.environ.get("PORT") or 8000)
    _configure_logging(log_config, debug)
    sockets = _bind(port, app_settings.get("address"))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = create_application(**app_settings)
        loop.run_until_complete(Runner(app).serve(sockets))
    finally:
        loop.close()
