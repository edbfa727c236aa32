"""divak: observable, reliable Tornado services by mixing in a few classes.

Handler side: :class:`RequestTracker`, :class:`Logger`,
:class:`HttpClientMixin`.  Application side: :class:`Recorder`,
:class:`ProbabilisticSampler`, :class:`Application`.  Reporters:
:class:`ZipkinReporter`, :class:`OTLPReporter`, :class:`LoggingReporter`.
Metrics: :class:`MetricsHandler` (Prometheus), :class:`OTLPMetricsReporter`.
Propagators: :class:`TraceContextPropagation`, :class:`ZipkinPropagation`,
:class:`RequestIdPropagation`, :class:`BaggagePropagation`.  And :func:`run`.

Importing divak installs its log record factory, so every log record has
``otelTraceID``, ``otelSpanID``, ``otelTraceSampled``, ``otelServiceName``
and ``divak_request_id`` (see :mod:`divak.logging`).
"""

from divak.logging import install_record_factory

install_record_factory()

from divak.app import Application, CallbackManager, StatusHandler  # noqa: E402
from divak.client import HttpClientMixin  # noqa: E402
from divak.handlers import Logger  # noqa: E402
from divak.metrics_export import MetricsHandler  # noqa: E402
from divak.metrics_otlp import OTLPMetricsReporter  # noqa: E402
from divak.mixins import ErrorLogger, ErrorWriter, LoggingHandler  # noqa: E402
from divak.propagation import (  # noqa: E402
    BaggagePropagation,
    RequestIdPropagation,
    TraceContextPropagation,
    ZipkinPropagation,
)
from divak.reporters import LoggingReporter, OTLPReporter, ZipkinReporter  # noqa: E402
from divak.runner import Runner, run  # noqa: E402
from divak.sampling import ProbabilisticSampler  # noqa: E402
from divak.tracing import Recorder, RequestContext, RequestTracker  # noqa: E402

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
    "run",
]
