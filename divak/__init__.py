"""divak: observable, reliable Tornado services by mixing in a few classes.

Handler side: :class:`RequestTracker`, :class:`Logger`,
:class:`HttpClientMixin`, :class:`ErrorLogger`, :class:`ErrorWriter`.
Application side: :class:`Recorder`, :class:`ProbabilisticSampler`,
:class:`Application`.  Reporters: :class:`ZipkinReporter`,
:class:`OTLPReporter`, :class:`LoggingReporter`.  Metrics:
:class:`MetricsHandler` (Prometheus), :class:`OTLPMetricsReporter`.
Propagators: :class:`TraceContextPropagation`, :class:`ZipkinPropagation`,
:class:`RequestIdPropagation`, :class:`BaggagePropagation`.  And :func:`run`.

Each concept has a package of its own (see :doc:`design`):
:mod:`divak.tracing`, :mod:`divak.propagation`, :mod:`divak.export`,
:mod:`divak.metrics`, :mod:`divak.logs`, :mod:`divak.errors`,
:mod:`divak.client`, :mod:`divak.lifecycle`, :mod:`divak.integrations`,
:mod:`divak.testing`; this module re-exports their public names.

Importing divak changes nothing process-wide.  A :class:`Recorder`
application (or :func:`run`, or :func:`install_log_ids`) installs the log
record factory that gives every log record ``otelTraceID``, ``otelSpanID``,
``otelTraceSampled``, ``otelServiceName`` and ``divak_request_id`` (see
:mod:`divak.logs.ids`).
"""

import os
import sys


def _refuse_divak_tornado() -> None:
    """Raise when divak-tornado, which installs a ``divak`` package too, is installed.

    Installing one distribution over the other leaves a mix of both
    packages' files; this fails at import with an error naming it instead of
    later on a missing name.  It looks for divak-tornado's installer record
    (``divak_tornado-*.dist-info``) beside this package and on
    :data:`sys.path`: one directory listing each, no metadata parsing.

    :raises ImportError: naming the distribution, and saying to uninstall it
        and reinstall divak
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for entry in dict.fromkeys([here, *sys.path]):
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.lower().startswith(("divak_tornado-", "divak-tornado-")) and (
                name.endswith((".dist-info", ".egg-info"))
            ):
                version = name.split("-")[1].removesuffix(".dist")
                raise ImportError(
                    f"divak cannot be imported while divak-tornado {version} is "
                    "installed: both install the 'divak' package, so their files "
                    "overwrite each other. Run 'pip uninstall divak-tornado divak', "
                    "then reinstall divak."
                )


_refuse_divak_tornado()

from divak.client import HttpClientMixin  # noqa: E402
from divak.context import RequestContext  # noqa: E402
from divak.errors import ErrorLogger, ErrorWriter  # noqa: E402
from divak.export import LoggingReporter, OTLPReporter, ZipkinReporter  # noqa: E402
from divak.lifecycle import (  # noqa: E402
    Application,
    CallbackManager,
    Runner,
    StatusHandler,
    run,
)
from divak.logs import Logger, LoggingHandler, install_log_ids  # noqa: E402
from divak.metrics import MetricsHandler, OTLPMetricsReporter  # noqa: E402
from divak.propagation import (  # noqa: E402
    BaggagePropagation,
    RequestIdPropagation,
    TraceContextPropagation,
    ZipkinPropagation,
)
from divak.tracing import ProbabilisticSampler, Recorder, RequestTracker  # noqa: E402
from divak.version import __version__  # noqa: E402

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
