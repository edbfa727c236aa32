"""divak: observable, reliable Tornado services by mixing in a few classes.

Handler side: :class:`RequestTracker`, :class:`Logger`,
:class:`HttpClientMixin`.  Application side: :class:`Recorder`,
:class:`ProbabilisticSampler`, :class:`Application`.  Reporters:
:class:`ZipkinReporter`, :class:`OTLPReporter`, :class:`LoggingReporter`.
Metrics: :class:`MetricsHandler` (Prometheus), :class:`OTLPMetricsReporter`.
Propagators: :class:`TraceContextPropagation`, :class:`ZipkinPropagation`,
:class:`RequestIdPropagation`, :class:`BaggagePropagation`.  And :func:`run`.

Importing divak changes nothing process-wide.  A :class:`Recorder`
application (or :func:`run`, or :func:`install_log_ids`) installs the log
record factory that gives every log record ``otelTraceID``, ``otelSpanID``,
``otelTraceSampled``, ``otelServiceName`` and ``divak_request_id`` (see
:mod:`divak.log`).
"""

import divak._conflicts  # noqa: F401 - refuses to run next to divak-tornado
from divak.app import Application, CallbackManager, StatusHandler
from divak.client import HttpClientMixin
from divak.context import RequestContext
from divak.handlers import Logger
from divak.log import install_log_ids
from divak.metrics_export import MetricsHandler
from divak.metrics_otlp import OTLPMetricsReporter
from divak.mixins import ErrorLogger, ErrorWriter, LoggingHandler
from divak.propagation import (
    BaggagePropagation,
    RequestIdPropagation,
    TraceContextPropagation,
    ZipkinPropagation,
)
from divak.reporters import LoggingReporter, OTLPReporter, ZipkinReporter
from divak.runner import Runner, run
from divak.sampling import ProbabilisticSampler
from divak.tracing import Recorder, RequestTracker

__version__ = "0.1.0"

__all__ = [
    "Application",
    "BaggagePropagation",
    "CallbackManager",
    "ErrorLogger",
    "ErrorWriter",
    "HttpClientMixin",
    "Logger",
    "LoggingHandler",
    "LoggingReporter",
    "MetricsHandler",
    "OTLPMetricsReporter",
    "OTLPReporter",
    "ProbabilisticSampler",
    "Recorder",
    "RequestContext",
    "RequestIdPropagation",
    "RequestTracker",
    "Runner",
    "StatusHandler",
    "TraceContextPropagation",
    "ZipkinPropagation",
    "ZipkinReporter",
    "__version__",
    "install_log_ids",
    "run",
]
