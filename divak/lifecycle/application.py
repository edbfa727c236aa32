"""The application and its life-cycle callbacks.

:class:`Application` is a :class:`tornado.web.Application` with the
callback lists of sprockets.http (same names, same signatures) that
:func:`divak.run` and :class:`divak.testing.case.DivakTestCase` call at the
right moments, plus a readiness flag that :class:`StatusHandler` reports.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing

from tornado import httputil, ioloop, web

from divak.context import Probe
from divak.errors import ErrorLogger, ErrorWriter
from divak.lifecycle.callbacks import (
    as_future,
    callback_name,
    discard,
    logged,
    wait_bounded,
)
from divak.logs.access import AccessLogger
from divak.settings import number_setting
from divak.tracing.recorder import Recorder

__all__ = ["Application", "CallbackManager", "NotFoundHandler", "StatusHandler"]

logger = logging.getLogger("divak.app")

BeforeRunCallback = typing.Callable[[web.Application, ioloop.IOLoop], typing.Any]
OnStartCallback = typing.Callable[[web.Application, ioloop.IOLoop], typing.Any]
ShutdownCallback = typing.Callable[[web.Application], typing.Any]


class CallbackManager:
    """Life-cycle callbacks and readiness, mixed into :class:`Application`.

    The three callback lists (:attr:`before_run_callbacks`,
    :attr:`on_start_callbacks`, :attr:`on_shutdown_callbacks`) have
    sprockets.http's names and signatures.

    .. attribute:: ready_to_serve

       An event with ``set()``, ``clear()`` and ``is_set()`` that
       :class:`StatusHandler` reports.  By default an :class:`asyncio.Event`
       the runner sets once the server accepts requests *and* every
       ``before_run`` and ``on_start`` callback finished, and clears when
       the drain starts.  An application that must hold readiness until an
       asynchronous dependency is up replaces it with its own event in
       ``__init__`` (``self.ready_to_serve = tornado.locks.Event()``, as
       sprockets.http documents) and sets it itself; the runner then never
       sets it (see :attr:`owns_readiness`).

    .. attribute:: draining

       :data:`True` from the moment the drain starts
       (:meth:`start_draining`); tells :class:`StatusHandler` to answer
       ``draining`` rather than ``starting``.  The application is the one
       owner of this state: :func:`divak.run`, :class:`~divak.Runner` and
       :meth:`stop` all go through :meth:`start_draining`.
    """

    if typing.TYPE_CHECKING:
        settings: dict[str, typing.Any]

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        self.runner_callbacks: dict[str, list[typing.Callable[..., typing.Any]]] = (
            kwargs.pop("runner_callbacks", None) or {}
        )
        for key in ("before_run", "on_start", "shutdown"):
            self.runner_callbacks.setdefault(key, [])
        self.ready_to_serve: typing.Any = asyncio.Event()
        self._divak_ready = self.ready_to_serve
        self.draining = False
        super().__init__(*args, **kwargs)

    @property
    def before_run_callbacks(self) -> list[BeforeRunCallback]:
        """``callback(application, io_loop)`` run, in order, before serving.

        Called before the server accepts connections.  A callback may be a
        coroutine function (or return any awaitable): it is awaited before
        the next one runs, all of them together bounded by
        ``settings['start_limit']`` seconds (default 30).  An exception, or
        running out of time, aborts the start: it is logged and the
        process exits with status 70.
        """
        return self.runner_callbacks["before_run"]

    @property
    def on_start_callbacks(self) -> list[OnStartCallback]:
        """``callback(application, io_loop)`` run once the server listens.

        Called together once the server accepts connections; awaitables
        (coroutine functions) are awaited, bounded by
        ``settings['start_limit']`` seconds.  An exception is logged; one
        that does not finish in time is cancelled and logged.  The runner
        marks the application ready (:attr:`ready_to_serve`) only after
        every one of them finished.
        """
        return self.runner_callbacks["on_start"]

    @property
    def on_shutdown_callbacks(self) -> list[ShutdownCallback]:
        """``callback(application)`` run on shutdown; may return an awaitable.

        Called after the server stopped accepting connections and in-flight
        requests finished.  Awaitables run together, bounded by
        ``shutdown_limit`` seconds; exceptions are logged, never fatal.
        """
        return self.runner_callbacks["shutdown"]

    @property
    def tornado_application(self) -> web.Application:
        """The :class:`tornado.web.Application` (this object), as sprockets.http."""
        return typing.cast(web.Application, self)

    @property
    def owns_readiness(self) -> bool:
        """Whether the application replaced :attr:`ready_to_serve` with its own event.

        :data:`True` after ``self.ready_to_serve = tornado.locks.Event()``
        (sprockets.http's pattern): then only the application sets it, and
        neither :func:`divak.run` nor :class:`~divak.Runner` ever does.
        """
        return self.ready_to_serve is not self._divak_ready

    def start_draining(self) -> None:
        """The drain starts: set :attr:`draining`; clear the readiness divak owns.

        :attr:`ready_to_serve` is cleared unless the application replaced
        it with its own event (:attr:`owns_readiness`).  The runner calls it
        when the process is asked to stop, :meth:`stop` too.
        """
        self.draining = True
        if not self.owns_readiness:
            self.ready_to_serve.clear()

    def start(self, io_loop: ioloop.IOLoop) -> None:
        """Run the ``before_run`` callbacks, then spawn the ``on_start`` ones.

        sprockets.http's synchronous entry point.  Awaitables returned by a
        ``before_run`` callback are awaited (with :meth:`IOLoop.run_sync
        <tornado.ioloop.IOLoop.run_sync>`) when *io_loop* is not running
        yet; on a running loop use :meth:`run_before_run_callbacks`.

        :param io_loop: the loop the application will run on
        :raises Exception: whatever a ``before_run`` callback raised, after
            logging it
        :raises RuntimeError: when a callback returns an awaitable while
            *io_loop* is already running
        """
        for callback in self.before_run_callbacks:
            try:
                result = callback(self.tornado_application, io_loop)
                if inspect.isawaitable(result):
                    if io_loop.asyncio_loop.is_running():  # type: ignore[attr-defined]
                        discard(result)
                        raise RuntimeError(
                            "a coroutine before_run callback needs "
                            "'await app.run_before_run_callbacks(io_loop)'"
                        )
                    io_loop.run_sync(
                        lambda awaitable=result: awaitable, timeout=self.start_limit
                    )
            except Exception:
                logger.exception(
                    "before_run callback %s failed, start cancelled",
                    callback_name(callback),
                )
                raise
        for callback in self.on_start_callbacks:
            io_loop.spawn_callback(logged, callback, self.tornado_application, io_loop)

    @property
    def start_limit(self) -> float:
        """Seconds the ``before_run`` and the ``on_start`` callbacks may take.

        ``settings['start_limit']``, default 30.

        :raises ValueError: when the setting is not a number
        """
        return number_setting(self.settings, "start_limit", None, 30.0)

    async def run_before_run_callbacks(self, io_loop: ioloop.IOLoop) -> None:
        """Run the ``before_run`` callbacks in order, awaiting awaitables.

        All of them together are bounded by :attr:`start_limit` seconds.

        :param io_loop: passed to every callback
        :raises Exception: whatever a callback raised, after logging it
        :raises TimeoutError: when they did not finish within
            :attr:`start_limit` seconds (logged too)
        """
        limit = self.start_limit
        deadline = asyncio.get_running_loop().time() + limit
        for callback in self.before_run_callbacks:
            try:
                result = callback(self.tornado_application, io_loop)
                if inspect.isawaitable(result):
                    remaining = deadline - asyncio.get_running_loop().time()
                    await asyncio.wait_for(as_future(result), max(remaining, 0))
            except TimeoutError:
                logger.error(
                    "before_run callback %s did not finish within %.1fs, "
                    "start cancelled",
                    callback_name(callback),
                    limit,
                )
                raise
            except Exception:
                logger.exception(
                    "before_run callback %s failed, start cancelled",
                    callback_name(callback),
                )
                raise

    async def run_on_start_callbacks(self, io_loop: ioloop.IOLoop) -> bool:
        """Run every ``on_start`` callback, awaiting awaitables together.

        Bounded by :attr:`start_limit` seconds; exceptions are logged,
        callbacks still running at the limit are cancelled and logged.

        :param io_loop: passed to every callback
        :returns: :data:`True` when every callback finished in time
        """
        pending: dict[asyncio.Future[typing.Any], typing.Any] = {}
        for callback in self.on_start_callbacks:
            try:
                result = callback(self.tornado_application, io_loop)
            except Exception:
                logger.exception("on_start callback %s failed", callback_name(callback))
                continue
            if inspect.isawaitable(result):
                pending[as_future(result)] = callback
        return await wait_bounded(pending, self.start_limit, "on_start")

    async def run_shutdown_callbacks(self, timeout: float) -> None:
        """Run every ``on_shutdown`` callback, bounded by *timeout* seconds.

        Awaitables that have not finished after *timeout* seconds are
        cancelled and logged; exceptions are logged and ignored.

        :param timeout: seconds to wait for all callbacks together
        """
        pending: dict[asyncio.Future[typing.Any], typing.Any] = {}
        for callback in self.on_shutdown_callbacks:
            try:
                result = callback(self.tornado_application)
            except Exception:
                logger.exception("shutdown callback %s failed", callback_name(callback))
                continue
            if inspect.isawaitable(result):
                pending[as_future(result)] = callback
        await wait_bounded(pending, timeout, "shutdown")

    def stop(
        self,
        io_loop: ioloop.IOLoop,
        shutdown_limit: float = 5.0,
        wait_timeout: float = 1.0,
    ) -> None:
        """Run the shutdown callbacks, then stop *io_loop* (sprockets.http's API).

        :param io_loop: the loop to stop once the callbacks finished
        :param shutdown_limit: seconds to wait for the callbacks at most
        :param wait_timeout: unused; kept for compatibility
        """
        self.start_draining()

        async def stop() -> None:
            try:
                await self.run_shutdown_callbacks(shutdown_limit)
            finally:
                io_loop.stop()

        io_loop.spawn_callback(stop)


def _server_header(service: str | None, version: typing.Any) -> str | None:
    """``service/version``, ``service`` alone, or :data:`None` without a service."""
    if not service:
        return None
    return f"{service}/{version}" if version else service


class _ServerHeader(web.OutputTransform):
    """Set or remove the ``Server`` header; one instance per application.

    Made by :class:`Application`, which leaves ``settings['server_header']``
    as sprockets.http does: when the settings have no such key, it is set
    to the default (``service/version``, ``service``, or :data:`None`), so
    handlers may read it.  The header is read from the setting for every
    response, so a value set later wins.  While the setting still holds
    the default it was given, the header follows the service name the
    application asks for now (a :class:`~divak.Recorder`'s name given in
    code, set after the application was made, included).
    """

    def __init__(self, application: web.Application) -> None:
        self.application = application
        self.settings = application.settings
        #: The default written into the settings, or :data:`None` when the
        #: application was given a ``server_header`` setting.
        self.default: tuple[str | None] | None = None
        # The last (service, version) the default followed, and its header.
        self._last: tuple[tuple[str | None, typing.Any], str | None] = (
            ("", None),
            None,
        )
        if "server_header" not in self.settings:
            value = _server_header(
                self.settings.get("service"), self.settings.get("version")
            )
            self.settings["server_header"] = value
            self.default = (value,)

    def __call__(self, request: httputil.HTTPServerRequest) -> _ServerHeader:
        # Tornado asks its transforms for a per-request object; this one
        # keeps no per-request state, so it is its own.
        return self

    def transform_first_chunk(
        self,
        status_code: int,
        headers: httputil.HTTPHeaders,
        chunk: bytes,
        finishing: bool,
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        self.set_header(None, status_code, headers)
        return status_code, headers, chunk

    def set_header(
        self,
        request: httputil.HTTPServerRequest | None,
        status_code: int,
        headers: httputil.HTTPHeaders,
    ) -> None:
        """Set or remove the ``Server`` header in *headers*.

        As a transform, or as a :class:`~divak.Recorder` application's
        response hook (:attr:`~divak.Recorder.divak_response_hooks`).
        """
        settings = self.settings
        value = settings.get("server_header")
        if self.default is not None and value == self.default[0]:
            key = (_service_name(self.application), settings.get("version"))
            last = self._last
            if last[0] != key:
                last = self._last = (key, _server_header(*key))
            value = last[1]
        if value is None:
            headers.pop("Server", None)
        else:
            headers["Server"] = value


def _service_name(application: web.Application) -> str | None:
    """The name the ``Server`` header defaults to.

    A :class:`~divak.Recorder` application's instrumentation keeps it
    (:attr:`~divak.tracing.instrumentation.Instrumentation.requested_service_name`);
    another application's is ``settings['service']``.
    """
    if isinstance(application, Recorder):
        return application.divak_instrumentation.requested_service_name
    return application.settings.get("service")


class Application(CallbackManager, AccessLogger):
    """A :class:`tornado.web.Application` with life-cycle callbacks.

    Accepts every argument :class:`tornado.web.Application` accepts.  Its
    access log line is divak's (:class:`~divak.logs.access.AccessLogger`:
    divak's wording, or sprockets.http's with
    ``settings['access_log_format'] = "combined"``, and the handler's
    ``access_log_failures_only``).

    .. rubric:: settings['server_header']

    The ``Server`` response header.  As sprockets.http does, the
    constructor sets it when it is absent, to ``service/version`` from
    ``settings['service']`` and ``settings['version']`` (or ``service``
    alone, or :data:`None` without a service), so handlers can read
    ``self.settings['server_header']``; it is read again for every
    response, so a value set later wins.  While it still holds that
    default, in a :class:`divak.Recorder` application the service named
    with :meth:`divak.Recorder.set_divak_service` wins over
    ``settings['service']`` (the name its spans carry).  :data:`None`
    removes the header.

    .. rubric:: settings['shutdown_limit']

    Seconds :func:`divak.run` waits for in-flight requests, and then for
    shutdown callbacks, when the process is asked to stop.  Default 5.

    .. rubric:: settings['start_limit']

    Seconds the ``before_run`` callbacks, and then the ``on_start``
    callbacks, may take.  Default 30.

    .. rubric:: settings['default_handler_class']

    Tornado's handler for requests no route matches.  Defaults to
    :class:`NotFoundHandler`, so unknown paths are answered with divak's
    JSON error document (and logged once) like every other error; set it
    to use another handler.
    """

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        kwargs.setdefault("default_handler_class", NotFoundHandler)
        super().__init__(*args, **kwargs)
        server_header = _ServerHeader(self)
        if isinstance(self, Recorder):  # one output transform per response
            self.divak_response_hooks.append(server_header.set_header)
        else:
            self.add_transform(server_header)  # type: ignore[arg-type]


class NotFoundHandler(ErrorLogger, ErrorWriter, web.RequestHandler):
    """Answer 404 with divak's error document: the default for unknown routes.

    Raises :class:`tornado.web.HTTPError` 404 in ``prepare``, whatever the
    method; :class:`~divak.ErrorWriter` writes the JSON (or RFC 9457)
    document with the trace and request ids and
    :class:`~divak.ErrorLogger` logs one WARNING line.
    """

    def prepare(self) -> None:
        """Raise :class:`tornado.web.HTTPError` 404 for every request."""
        raise web.HTTPError(404)


class StatusHandler(Probe, web.RequestHandler):
    """A ready-made readiness endpoint: route it, e.g. ``(r"/status", StatusHandler)``.

    ``GET`` answers ``200 {"status": "ok"}`` while the application's
    :attr:`~CallbackManager.ready_to_serve` event is set, and
    ``503 {"status": "starting"}`` with ``Retry-After`` otherwise.  From
    the moment the drain starts (the application's
    :attr:`~CallbackManager.draining` attribute) it answers
    ``503 {"status": "draining"}``, whoever owns the event, so a load
    balancer stops sending traffic at once.  Works with any application:
    one that is not a :class:`CallbackManager` (a plain
    :class:`tornado.web.Application`) is always ready.  A
    :class:`~divak.context.Probe`: its requests are not traced unless
    ``settings['divak_trace_probes']`` is true.
    """

    def get(self) -> None:
        """Report readiness as a JSON document."""
        application = self.application
        if not isinstance(application, CallbackManager):
            self.write({"status": "ok"})
            return
        draining = application.draining
        if not draining and application.ready_to_serve.is_set():
            self.write({"status": "ok"})
            return
        self.set_status(503)
        self.set_header("Retry-After", "5")
        self.write({"status": "draining" if draining else "starting"})
