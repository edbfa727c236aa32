"""The application and its life-cycle callbacks.

:class:`Application` is a :class:`tornado.web.Application` with the
callback lists of sprockets.http (same names, same signatures) that
:func:`divak.run` and :class:`divak.testing.DivakTestCase` call at the
right moments, plus a readiness flag that :class:`StatusHandler` reports.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing

from tornado import httputil, ioloop, web

from divak import access

__all__ = ["Application", "CallbackManager", "StatusHandler"]

logger = logging.getLogger(__name__)

BeforeRunCallback = typing.Callable[[web.Application, ioloop.IOLoop], typing.Any]
OnStartCallback = typing.Callable[[web.Application, ioloop.IOLoop], typing.Any]
ShutdownCallback = typing.Callable[[web.Application], typing.Any]


class CallbackManager:
    """Life-cycle callbacks and readiness, mixed into :class:`Application`.

    The three callback lists (:attr:`before_run_callbacks`,
    :attr:`on_start_callbacks`, :attr:`on_shutdown_callbacks`) have
    sprockets.http's names and signatures.

    .. attribute:: ready_to_serve

       An :class:`asyncio.Event`, set once the server accepts requests and
       cleared as soon as the drain starts.

    .. attribute:: draining

       :data:`True` from the moment the drain starts; tells
       :class:`StatusHandler` to answer ``draining`` rather than
       ``starting``.
    """

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        self.runner_callbacks: dict[str, list[typing.Callable[..., typing.Any]]] = (
            kwargs.pop("runner_callbacks", None) or {}
        )
        for key in ("before_run", "on_start", "shutdown"):
            self.runner_callbacks.setdefault(key, [])
        self.ready_to_serve = asyncio.Event()
        self.draining = False
        super().__init__(*args, **kwargs)

    @property
    def before_run_callbacks(self) -> list[BeforeRunCallback]:
        """Synchronous ``callback(application, io_loop)`` run before serving.

        Called in order before the server accepts connections.  An
        exception aborts the start: it is logged and the process exits
        with a non-zero status.
        """
        return self.runner_callbacks["before_run"]

    @property
    def on_start_callbacks(self) -> list[OnStartCallback]:
        """``callback(application, io_loop)`` spawned once the IOLoop runs.

        A coroutine function is fine; an exception is logged.
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

    def start(self, io_loop: ioloop.IOLoop) -> None:
        """Run the ``before_run`` callbacks, then spawn the ``on_start`` ones.

        :param io_loop: the loop the application will run on
        :raises Exception: whatever a ``before_run`` callback raised, after
            logging it
        """
        for callback in self.before_run_callbacks:
            try:
                callback(self.tornado_application, io_loop)
            except Exception:
                logger.exception(
                    "before_run callback %s failed, start cancelled", _name(callback)
                )
                raise
        for callback in self.on_start_callbacks:
            io_loop.spawn_callback(_logged, callback, self.tornado_application, io_loop)

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
                logger.exception("shutdown callback %s failed", _name(callback))
                continue
            if inspect.isawaitable(result):
                pending[asyncio.ensure_future(result)] = callback
        if not pending:
            return
        done, not_done = await asyncio.wait(pending, timeout=timeout)
        for future in done:
            if not future.cancelled() and future.exception() is not None:
                logger.error(
                    "shutdown callback %s failed",
                    _name(pending[future]),
                    exc_info=future.exception(),
                )
        for future in not_done:
            logger.warning(
                "shutdown callback %s did not finish within %.1fs, cancelled",
                _name(pending[future]),
                timeout,
            )
            future.cancel()
        if not_done:  # let the cancellations run before the loop closes
            await asyncio.wait(not_done, timeout=0.1)

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
        self.ready_to_serve.clear()
        self.draining = True

        async def stop() -> None:
            try:
                await self.run_shutdown_callbacks(shutdown_limit)
            finally:
                io_loop.stop()

        io_loop.spawn_callback(stop)


def _name(callback: typing.Any) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


async def _logged(
    callback: typing.Callable[..., typing.Any], *args: typing.Any
) -> None:
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_start callback %s failed", _name(callback))


class _ServerHeader(web.OutputTransform):
    """Set or remove the ``Server`` header; one instance per application."""

    def __init__(self, settings: dict[str, typing.Any]) -> None:
        self.settings = settings

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
        value = self.settings.get("server_header")
        if value is None:
            headers.pop("Server", None)
        else:
            headers["Server"] = value
        return status_code, headers, chunk


class Application(CallbackManager, web.Application):
    """A :class:`tornado.web.Application` with life-cycle callbacks.

    Accepts every argument :class:`tornado.web.Application` accepts.

    .. rubric:: settings['server_header']

    The ``Server`` response header.  Defaults to ``service/version`` from
    ``settings['service']`` and ``settings['version']`` (or ``service``
    alone), as sprockets.http does; :data:`None` (the default without a
    service) removes the header.

    .. rubric:: settings['shutdown_limit']

    Seconds :func:`divak.run` waits for in-flight requests, and then for
    shutdown callbacks, when the process is asked to stop.  Default 5.
    """

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().__init__(*args, **kwargs)
        if "server_header" not in self.settings:
            service = self.settings.get("service")
            version = self.settings.get("version")
            self.settings["server_header"] = (
                f"{service}/{version}" if service and version else service or None
            )
        self.add_transform(_ServerHeader(self.settings))  # type: ignore[arg-type]

    def log_request(self, handler: web.RequestHandler) -> None:
        """Write *handler*'s access log line with :func:`divak.access.write_access_log`.

        Replaces Tornado's wording by divak's (or sprockets.http's with
        ``settings['access_log_format'] = "combined"``) and honours the
        handler's ``access_log_failures_only``.  A ``log_function`` setting
        still takes precedence, as in Tornado.

        :param handler: the handler that answered the request
        """
        if "log_function" in self.settings:
            self.settings["log_function"](handler)
        else:
            access.write_access_log(handler)


class StatusHandler(web.RequestHandler):
    """A ready-made readiness endpoint: route it, e.g. ``(r"/status", StatusHandler)``.

    ``GET`` answers ``200 {"status": "ok"}`` while the application's
    :attr:`~CallbackManager.ready_to_serve` event is set, and
    ``503 {"status": "starting"}`` or ``503 {"status": "draining"}`` with
    ``Retry-After`` otherwise, so a load balancer stops sending traffic as
    soon as the drain starts.  Works with any application: one without
    ``ready_to_serve`` is always ready.
    """

    def get(self) -> None:
        """Report readiness as a JSON document."""
        ready = getattr(self.application, "ready_to_serve", None)
        if ready is None or ready.is_set():
            self.write({"status": "ok"})
            return
        self.set_status(503)
        self.set_header("Retry-After", "5")
        draining = getattr(self.application, "draining", False)
        self.write({"status": "draining" if draining else "starting"})
