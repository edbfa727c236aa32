"""divak-tornado's public names, so ``divak.api.X`` keeps working.

Code written for divak-tornado 0.0.3 runs unchanged: as there,
:class:`Logger` is a :class:`tornado.web.RequestHandler` (``class
Ping(divak.api.Logger)`` is a complete handler) and :class:`Recorder` is a
:class:`tornado.web.Application` (``class App(divak.api.Recorder)`` is a
complete application).  Both still mix with other handler and application
classes placed before ``RequestHandler`` / ``Application`` in the bases.
``RequestIdPropagator`` is the old name of
:class:`~divak.RequestIdPropagation`.
"""

from __future__ import annotations

import typing

from opentelemetry import context as otel_context
from tornado import web

from divak import (
    HttpClientMixin,
    LoggingReporter,
    ProbabilisticSampler,
    Recorder,
    RequestIdPropagation,
    RequestTracker,
    TraceContextPropagation,
    ZipkinPropagation,
    ZipkinReporter,
)
from divak.handlers import Logger as _LoggerMixin

#: divak-tornado's name for :class:`~divak.RequestIdPropagation`.
RequestIdPropagator = RequestIdPropagation


class Logger(_LoggerMixin, web.RequestHandler):
    """divak-tornado's ``Logger``: a request handler with a correlated ``logger``.

    A :class:`tornado.web.RequestHandler` with :class:`divak.Logger` mixed
    in, as divak-tornado 0.0.3 defined it, so a handler may derive from it
    alone.  ``self.logger`` is a :class:`logging.LoggerAdapter` whose
    records carry ``divak_request_id`` and the trace ids (see
    :class:`divak.Logger`), also when the handler does not mix in
    :class:`~divak.RequestTracker`: in a :class:`~divak.Recorder`
    application, ``prepare`` then starts the request's SERVER span and
    makes its context current for the handler.  New code mixes
    :class:`divak.Logger` into its own handler instead.
    """

    def prepare(self) -> typing.Awaitable[None] | None:
        """Make the request's context current; chain to ``super()``."""
        application = self.application
        if not isinstance(self, RequestTracker) and isinstance(application, Recorder):
            request_context = application.divak_start_span(
                self.request, application.divak_route(self)
            )
            if request_context.context is not None:
                # Attached for the rest of the handler's task, which ends
                # with the request; the access log line ends the span.
                otel_context.attach(request_context.context)
        return super().prepare()


__all__ = [
    "HttpClientMixin",
    "Logger",
    "LoggingReporter",
    "ProbabilisticSampler",
    "Recorder",
    "RequestIdPropagation",
    "RequestIdPropagator",
    "RequestTracker",
    "TraceContextPropagation",
    "ZipkinPropagation",
    "ZipkinReporter",
]
