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
    """Non-data descriptor: the per-class adapter, unless overridden.

    :param wrapped: the logger a class defined as its ``logger``, which
        the class itself keeps showing; :data:`None` for the logger named
        after the class
    """

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: logging.Logger | None = None) -> None:
        self.wrapped = wrapped

    def __get__(
        self, instance: object, owner: type
    ) -> RequestLogger | logging.Logger:
        wrapped = self.wrapped
        if instance is None and wrapped is not None:
            return wrapped  # the class shows the logger it was given
        return class_logger(owner, wrapped)


class Logger:
    """Handler mix-in that gives the handler a correlation-aware ``logger``.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass, before
      ``RequestHandler`` in the bases;
    * optionally give the class a ``logger`` attribute (a
      :class:`logging.Logger`); handlers get it wrapped instead of the
      default (the class itself still shows the logger it was given).

    Nothing is done per request: the adapter is made once per class.

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

    def __init_subclass__(cls, **kwargs: typing.Any) -> None:
        """Wrap a plain ``logger`` the new class defines (once per class)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("logger")
        if isinstance(own, logging.Logger):
            cls.logger = _ClassLogger(own)


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
    together with it).  A plain ``logger`` attribute is wrapped when the
    class is made, so the adapter is in place from the handler's start,
    for errors raised before ``prepare`` too.
    """
