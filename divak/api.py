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
from divak.logs.adapter import Logger as _LoggerMixin

#: divak-tornado's name for :class:`~divak.RequestIdPropagation`.
RequestIdPropagator = RequestIdPropagation


class Logger(_LoggerMixin, web.RequestHandler):
    """divak-tornado's ``Logger``: a request handler with a correlated ``logger``.

    A :class:`tornado.web.RequestHandler` with :class:`divak.Logger` mixed
    in, as divak-tornado 0.0.3 defined it, so a handler may derive from it
    alone.  ``self.logger`` is a :class:`logging.LoggerAdapter` whose
    records carry ``divak_request_id`` and the trace ids (see
    :class:`divak.Logger`); in a :class:`~divak.Recorder` application the
    request's context is current for every handler, so that holds with or
    without :class:`~divak.RequestTracker`.  New code mixes
    :class:`divak.Logger` into its own handler instead.
    """


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
