"""Export: where finished spans go, and the queue in front of each reporter.

:class:`SpanQueue` (:mod:`divak.export.queue`) is the bounded span
processor with its own thread in front of every reporter;
:mod:`divak.export.reporters` has the reporters (:class:`ZipkinReporter`,
:class:`OTLPReporter`, :class:`LoggingReporter`) and the ones
``OTEL_TRACES_EXPORTER`` names; :mod:`divak.export.zipkin_json` encodes
spans as Zipkin v2 JSON.
"""

from divak.export.queue import SpanQueue
from divak.export.reporters import (
    LoggingReporter,
    OTLPReporter,
    ZipkinReporter,
    reporters_from_env,
    warn_if_spans_go_to_log,
)

__all__ = [
    "LoggingReporter",
    "OTLPReporter",
    "SpanQueue",
    "ZipkinReporter",
    "reporters_from_env",
    "warn_if_spans_go_to_log",
]
