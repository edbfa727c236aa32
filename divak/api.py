"""divak-tornado's public names, so ``divak.api.X`` keeps working.

Code written for divak-tornado (``from divak.api import Recorder,
RequestTracker, ...``) runs unchanged; ``RequestIdPropagator`` is the old
name of :class:`~divak.RequestIdPropagation`.
"""

from divak import (
    HttpClientMixin,
    Logger,
    LoggingReporter,
    ProbabilisticSampler,
    Recorder,
    RequestIdPropagation,
    RequestTracker,
    TraceContextPropagation,
    ZipkinPropagation,
    ZipkinReporter,
)

#: divak-tornado's name for :class:`~divak.RequestIdPropagation`.
RequestIdPropagator = RequestIdPropagation

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
