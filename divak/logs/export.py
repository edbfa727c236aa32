"""Exporting log records through OpenTelemetry: ``OTEL_LOGS_EXPORTER``.

divak's own logs carry the request's ids on every record
(:mod:`divak.logs.ids`) and go wherever the logging configuration sends
them.  When ``OTEL_LOGS_EXPORTER`` names an exporter, the process's log
records are also exported as OpenTelemetry log records: the SDK's
``LoggerProvider``, with the resource of the application's spans and
metrics and one ``BatchLogRecordProcessor`` per exporter, and the SDK's
``LoggingHandler`` on the root logger, which gives each record the trace
and span ids of the context it was logged in.  Nothing changes when the
variable is not set.

The handler is process-wide (it sits on the root logger), so it is made
once per process, by the first application that starts its telemetry
(again in a forked child), and flushed when the process exits.
"""

from __future__ import annotations

import logging
import os
import typing
import warnings

# OpenTelemetry Python's logs signal has only private-named modules
# (watched by tests/test_private_names.py).
from opentelemetry import _logs as otel_logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs import LoggingHandler as OTelLoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

try:  # the SDK's name since 1.33; ConsoleLogExporter before
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
except ImportError:  # pragma: no cover - exercised by the lowest-versions run
    from opentelemetry.sdk._logs.export import (  # type: ignore[attr-defined,no-redef]
        ConsoleLogExporter as ConsoleLogRecordExporter,
    )
from opentelemetry.sdk.resources import Resource

from divak.settings import (
    entry_point_factories,
    env_value,
    names_variable,
    sdk_disabled,
    warn_once,
)

__all__ = ["export_logs", "log_exporters_from_env"]

logger = logging.getLogger("divak.logs")

#: ``(pid, provider, handler)`` of the export this process started.
_started: tuple[int, LoggerProvider, logging.Handler] | None = None

#: The names of ``OTEL_LOGS_EXPORTER`` divak builds itself.
_BUILT_IN = ("otlp", "console")


def _otlp_exporter() -> typing.Any:
    # The otlp extra is optional: imported when asked for.  The exporter's
    # module name is private (watched by tests/test_private_names.py).
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter,
    )

    return OTLPLogExporter()


def log_exporters_from_env() -> list[typing.Any]:
    """``OTEL_LOGS_EXPORTER``: the exporters of the process's log records.

    A comma-separated list, default ``none`` (divak's default: log lines
    carry the ids, and are not exported unless asked for; the
    specification's default is ``otlp``):

    * ``otlp``: the OTLP/HTTP log exporter (``otlp`` extra), to the
      endpoint of ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` /
      ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/logs`` appended);
    * ``console``: the SDK's ``ConsoleLogRecordExporter``;
    * ``none``: none;
    * any other name is looked up, as OpenTelemetry's SDK does, among the
      ``opentelemetry_logs_exporter`` entry points of the installed
      packages.

    An unknown name, or ``otlp`` without its package, is logged once as a
    WARNING and skipped.

    :returns: new exporter instances
    """
    value = env_value("OTEL_LOGS_EXPORTER") or "none"
    factories: dict[str, typing.Callable[[], typing.Any]] = {
        "otlp": _otlp_exporter,
        "console": ConsoleLogRecordExporter,
    }
    listed = {name.strip().lower() for name in value.split(",")} - {"", "none"}
    if not listed <= factories.keys():
        factories.update(
            entry_point_factories("opentelemetry_logs_exporter", exclude=_BUILT_IN)
        )
    exporters = []
    for name in names_variable("OTEL_LOGS_EXPORTER", value, factories):
        try:
            exporter = factories[name]()
        except ImportError as error:
            warn_once(
                "logs-exporter-import:" + name,
                "cannot export log records with %r: %s (install divak[otlp])",
                name,
                error,
            )
            continue
        if exporter is not None:
            exporters.append(exporter)
    return exporters


class _NotAboutExport(logging.Filter):
    """Keeps the export's own records (OpenTelemetry's loggers) out of it.

    An exporter that fails logs why; exporting that record would fail and
    log again, for as long as the collector is away.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


def export_logs(resource: Resource) -> LoggerProvider | None:
    """Export the process's log records when ``OTEL_LOGS_EXPORTER`` asks for it.

    Once per process (a forked child starts its own): a ``LoggerProvider``
    with *resource* and a ``BatchLogRecordProcessor`` per exporter of
    :func:`log_exporters_from_env`, which becomes OpenTelemetry's global
    logger provider when none is set, and the SDK's ``LoggingHandler`` for
    it on the root logger.  Records of OpenTelemetry's own loggers are not
    exported (a failing export would log, and export, forever).  The
    provider flushes and stops when the process exits; the SDK's
    ``OTEL_BLRP_*`` variables tune its batches.

    Does nothing when ``OTEL_SDK_DISABLED`` is true, when no exporter is
    named, or when the process set an SDK ``LoggerProvider`` of its own
    before (``opentelemetry-instrument``, your start-up code): that one
    exports, as it is configured to.

    Call it on the thread that starts the application's telemetry; the
    first call of the process decides.

    :param resource: the resource of the application's spans and metrics
    :returns: the provider divak exports with, or :data:`None`
    """
    global _started
    started = _started
    pid = os.getpid()
    parents: LoggerProvider | None = None
    if started is not None:
        if started[0] == pid:
            return started[1]
        # Forked: the parent's handler names the parent's resource.
        _started = None
        parents = started[1]
        logging.getLogger().removeHandler(started[2])
    if sdk_disabled():
        return None
    current = otel_logs.get_logger_provider()
    if isinstance(current, LoggerProvider) and current is not parents:
        logger.info("log records are exported by the process's own LoggerProvider")
        return None
    exporters = log_exporters_from_env()
    if not exporters:
        return None
    provider = LoggerProvider(resource=resource)
    for exporter in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    with warnings.catch_warnings():
        # The SDK's handler is deprecated in favour of a package divak
        # does not depend on; it is the one the SDK ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = OTelLoggingHandler(logger_provider=provider)
    handler.addFilter(_NotAboutExport())
    if parents is None:  # (the parent's stays the global one: set once)
        otel_logs.set_logger_provider(provider)
    logging.getLogger().addHandler(handler)
    _started = (pid, provider, handler)
    return provider
