"""Handler mix-ins that are not about tracing itself: :class:`Logger`."""

from __future__ import annotations

import logging
import typing

from divak.log import RequestLogger

__all__ = ["Logger"]


class _ClassLogger:
    """Non-data descriptor: the per-class adapter, unless overridden."""

    def __get__(self, instance: object, owner: type) -> RequestLogger:
        return _class_logger(owner, None)


class Logger:
    """Handler mix-in that gives the handler a correlation-aware ``logger``.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass, before
      ``RequestHandler`` in the bases;
    * optionally give the class a ``logger`` attribute (a
      :class:`logging.Logger`); it is wrapped instead of the default.

    .. attribute:: logger

       A :class:`~divak.log.RequestLogger` (a
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
            self.logger = _class_logger(type(self), current)
        return super().prepare()  # type: ignore[misc]


def _class_logger(cls: type, wrapped: logging.Logger | None) -> RequestLogger:
    adapter = Logger._divak_loggers.get(cls)
    if adapter is None or (wrapped is not None and adapter.logger is not wrapped):
        if wrapped is None:
            wrapped = logging.getLogger(f"{cls.__module__}.{cls.__qualname__}")
        adapter = RequestLogger(wrapped, {})
        Logger._divak_loggers[cls] = adapter
    return adapter
