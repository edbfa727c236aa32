"""Handler mix-ins that give a handler its correlated ``logger``.

:class:`Logger` (divak-tornado's name) and :class:`LoggingHandler`
(sprockets.http's): both a :class:`~divak.logs.ids.RequestLogger`.
"""

from __future__ import annotations

import logging
import typing

from divak.logs.ids import RequestLogger

__all__ = ["Logger", "LoggingHandler", "class_logger"]


class _ClassLogger:
    """Non-data descriptor: the per-class adapter, unless overridden."""

    def __get__(self, instance: object, owner: type) -> RequestLogger:
        return class_logger(owner, None)


class Logger:
    """Handler mix-in that gives the handler a correlation-aware ``logger``.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass, before
      ``RequestHandler`` in the bases;
    * optionally give the class a ``logger`` attribute (a
      :class:`logging.Logger`); it is wrapped instead of the default.

    .. attribute:: logger

       A :class:`~divak.logs.ids.RequestLogger` (a
       :class:`logging.LoggerAdapter`) around the class's own ``logger``
       attribute when it has one, else around the logger named
       ``module.ClassName``.  Every record it writes carries the request's
       ``otelTraceID``, ``otelSpanID`` and ``divak_request_id``, like any
       record written while the request is handled.  The adapter is made
       once per handler class, not per request.
    """

    _divak_loggers: typing.ClassVar[dict[type, RequestLogger]] = {}
    logger: typing.Any = _ClassLogger()

    def prepare(self) -> typing.Awaitable[None] | None:
        """Wrap a plain ``logger`` attribute; chain to ``super()``."""
        current = self.logger
        if not isinstance(current, logging.LoggerAdapter):
            self.logger = class_logger(type(self), current)
        return super().prepare()  # type: ignore[misc]


def class_logger(
    cls: type, wrapped: logging.Logger | logging.LoggerAdapter[typing.Any] | None
) -> RequestLogger:
    """The adapter of handler class *cls*, made once per class.

    :param cls: the handler class
    :param wrapped: the class's own logger (or logger adapter), or
        :data:`None` for the logger named ``module.ClassName``
    """
    adapter = Logger._divak_loggers.get(cls)
    if adapter is None or (wrapped is not None and adapter.logger is not wrapped):
        if wrapped is None:
            wrapped = logging.getLogger(f"{cls.__module__}.{cls.__qualname__}")
        adapter = RequestLogger(wrapped, {})
        Logger._divak_loggers[cls] = adapter
    return adapter


class LoggingHandler(Logger):
    """Handler mix-in that gives the handler a correlation-aware ``logger``.

    sprockets.http's ``LoggingHandler``, made the same adapter as
    :class:`divak.Logger`: ``self.logger`` is a
    :class:`~divak.logs.ids.RequestLogger` around the class's own ``logger``
    attribute when it has one, else around the logger named
    ``module.ClassName``; every record it writes carries the request's
    ``otelTraceID``, ``otelSpanID`` and ``divak_request_id``.

    To use it, mix it into a :class:`tornado.web.RequestHandler` subclass
    before ``RequestHandler`` (instead of :class:`divak.Logger`, not
    together with it).  A plain ``logger`` attribute is wrapped in
    :meth:`initialize`, so the adapter is in place before ``prepare``, for
    errors raised before ``prepare`` too.
    """

    def initialize(self) -> None:
        """Wrap a plain ``logger`` attribute; chain to ``super()``.

        A handler whose own ``initialize`` takes the route's keyword
        arguments calls ``super().initialize()`` without them.
        """
        current = self.logger
        if not isinstance(current, logging.LoggerAdapter):
            self.logger = class_logger(type(self), current)
        super().initialize()  # type: ignore[misc]
