"""The ``OTEL_*`` environment variables a deployment sets, read the standard way.

divak builds each application's ``TracerProvider`` itself, so it reads the
variables of OpenTelemetry's SDK specification here, once per application,
with their names, values and defaults, and the same rule for invalid
values: log a warning and use the default.  Code always wins.

See :doc:`/opentelemetry` for the full list of variables and their status.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import typing

from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

from divak import propagation, reporters
from divak.excluded import excluded_url_patterns, excluded_urls

__all__ = [
    "BatchSettings",
    "batch_settings",
    "excluded_url_patterns",
    "excluded_urls",
    "propagators",
    "reporters_from_env",
    "sampler",
    "warn_if_spans_go_to_log",
]

logger = logging.getLogger(__name__)

#: The sampler names of ``OTEL_TRACES_SAMPLER`` divak knows, each with the
#: OpenTelemetry SDK sampler it stands for (a function of the ratio).
_SAMPLERS: dict[str, typing.Callable[[float], sampling.Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda _: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}
_DEFAULT_SAMPLER = "parentbased_always_on"

#: ``OTEL_PROPAGATORS`` names and divak's propagator for each.
_PROPAGATORS: dict[str, typing.Callable[[], TextMapPropagator]] = {
    "tracecontext": propagation.TraceContextPropagation,
    "baggage": propagation.BaggagePropagation,
    "b3": lambda: propagation.ZipkinPropagation(single_header=True),
    "b3multi": lambda: propagation.ZipkinPropagation(single_header=False),
}
_DEFAULT_PROPAGATORS = "tracecontext,baggage"

_warned_lock = threading.Lock()
_warned: set[str] = set()


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def _warn_once(key: str, message: str, *args: object) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def _milliseconds(name: str, default: float) -> float:
    """Read a duration in milliseconds (the specification's unit); seconds out."""
    value = _get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0:
        logger.warning("ignoring %s=%r: not a number of milliseconds", name, value)
        return default
    return number / 1000


def integer_variable(name: str, default: int) -> int:
    """The positive integer in the environment variable *name*, else *default*.

    An invalid value is logged as a WARNING and *default* is used.
    """
    value = _get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        logger.warning("ignoring %s=%r: not a positive integer", name, value)
        return default
    return number


def sampler() -> sampling.Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` name.

    Follows the OpenTelemetry SDK environment variable specification:
    ``always_on``, ``always_off``, ``traceidratio``,
    ``parentbased_always_on`` (the default), ``parentbased_always_off`` and
    ``parentbased_traceidratio``, each built from the OpenTelemetry SDK's
    own sampler classes.  The ratio samplers take their probability from
    ``OTEL_TRACES_SAMPLER_ARG`` (default ``1.0``).  An unknown sampler
    name (``jaeger_remote`` and ``xray`` included) or a ratio outside
    ``[0, 1]`` is logged as a WARNING and the default is used.

    :returns: an :class:`opentelemetry.sdk.trace.sampling.Sampler`
    """
    name = _get("OTEL_TRACES_SAMPLER").lower() or _DEFAULT_SAMPLER
    factory = _SAMPLERS.get(name)
    if factory is None:
        _warn_once(
            "sampler:" + name,
            "ignoring OTEL_TRACES_SAMPLER=%r: not one of %s",
            name,
            ", ".join(_SAMPLERS),
        )
        name, factory = _DEFAULT_SAMPLER, _SAMPLERS[_DEFAULT_SAMPLER]
    ratio = 1.0
    argument = _get("OTEL_TRACES_SAMPLER_ARG")
    if argument and name.endswith("traceidratio"):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            _warn_once(
                "sampler-arg:" + argument,
                "ignoring OTEL_TRACES_SAMPLER_ARG=%r: not a probability from 0 to 1",
                argument,
            )
            ratio = 1.0
    return factory(ratio)


def propagators() -> list[TextMapPropagator]:
    """The propagators ``OTEL_PROPAGATORS`` names, as divak propagators.

    A comma-separated list; the default is ``tracecontext,baggage``, as in
    the OpenTelemetry SDK.  ``tracecontext`` is
    :class:`~divak.TraceContextPropagation`, ``baggage``
    :class:`~divak.BaggagePropagation`, ``b3`` the single ``b3`` header
    and ``b3multi`` the ``X-B3-*`` headers
    (:class:`~divak.ZipkinPropagation`).  ``none`` means no propagator.
    Unknown names (``jaeger``, ``xray``, ``ottrace``) are logged as a
    WARNING and skipped.  A :class:`~divak.Recorder` uses these only when
    the application added no trace propagator in code.

    :returns: new propagator instances, in the listed order
    """
    value = _get("OTEL_PROPAGATORS") or _DEFAULT_PROPAGATORS
    result: list[TextMapPropagator] = [
        _PROPAGATORS[name]() for name in _known("OTEL_PROPAGATORS", value, _PROPAGATORS)
    ]
    return result


def _known(
    variable: str, value: str, known: typing.Mapping[str, typing.Any]
) -> list[str]:
    """The names listed in *value* (a comma-separated variable), once each.

    ``none`` anywhere gives none; a name outside *known* is logged once as
    a WARNING and skipped.
    """
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if "none" in names:
        return []
    valid = []
    for name in dict.fromkeys(names):
        if name in known:
            valid.append(name)
        else:
            _warn_once(
                f"{variable}:{name}",
                "ignoring %r in %s: divak knows %s",
                name,
                variable,
                ", ".join([*known, "none"]),
            )
    return valid


def _zipkin() -> SpanExporter:
    return reporters.ZipkinReporter(
        timeout=_milliseconds("OTEL_EXPORTER_ZIPKIN_TIMEOUT", 10.0)
    )


def _otlp() -> SpanExporter:
    protocol = (
        _get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or _get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol != "http/protobuf":
        _warn_once(
            "otlp-protocol",
            "OTLP protocol %r is not supported, using http/protobuf",
            protocol,
        )
    timeout = _milliseconds(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        _milliseconds("OTEL_EXPORTER_OTLP_TIMEOUT", 10.0),
    )
    # The exporter reads the endpoint, headers, compression and
    # certificates from the OTEL_EXPORTER_OTLP_* variables itself.
    return reporters.OTLPReporter(timeout=timeout)


def _console() -> SpanExporter:
    return ConsoleSpanExporter()


_EXPORTERS: dict[str, typing.Callable[[], SpanExporter]] = {
    "zipkin": _zipkin,
    "otlp": _otlp,
    "console": _console,
}


def reporters_from_env() -> list[SpanExporter]:
    """The reporters ``OTEL_TRACES_EXPORTER`` names.

    A comma-separated list of ``zipkin`` (:class:`~divak.ZipkinReporter`
    to ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` with ``OTEL_EXPORTER_ZIPKIN_TIMEOUT``),
    ``otlp`` (:class:`~divak.OTLPReporter`, configured by the
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_EXPORTER_OTLP_TRACES_*`` endpoint,
    headers and timeout variables; needs the ``otlp`` extra), ``console``
    (the OpenTelemetry SDK's ``ConsoleSpanExporter``, JSON on standard
    output) and ``none`` (no reporter: spans are made, and exported
    nowhere).  Timeouts are in milliseconds, as the specification says.

    When the variable is not set: ``zipkin`` if
    ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is set, else ``otlp`` if an OTLP
    endpoint variable is set, else a :class:`~divak.LoggingReporter` (see
    :func:`warn_if_spans_go_to_log`).  An unknown
    name, or ``otlp`` without its package, is logged as a WARNING and
    skipped.  A :class:`~divak.Recorder` uses these only when the
    application added no reporter in code.

    :returns: new reporter instances
    """
    value = _get("OTEL_TRACES_EXPORTER").lower()
    if not value:
        if _get("OTEL_EXPORTER_ZIPKIN_ENDPOINT"):
            value = "zipkin"
        elif _get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ):
            value = "otlp"
        else:
            return [reporters.LoggingReporter()]
    result: list[SpanExporter] = []
    for name in _known("OTEL_TRACES_EXPORTER", value, _EXPORTERS):
        factory = _EXPORTERS[name]
        try:
            result.append(factory())
        except ImportError as error:
            _warn_once(
                "exporter-import:" + name,
                "cannot export spans with %r: %s (install divak[%s])",
                name,
                error,
                name,
            )
    return result


def _exporter_configured() -> bool:
    return any(
        _get(name)
        for name in (
            "OTEL_TRACES_EXPORTER",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    )


def warn_if_spans_go_to_log(application: typing.Any) -> bool:
    """Log one WARNING per process when *application*'s spans will only be logged.

    That is when the application is a :class:`divak.Recorder` that added no
    reporter in code and none of ``OTEL_TRACES_EXPORTER``,
    ``OTEL_EXPORTER_ZIPKIN_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set.  The message names the
    variable to set.  :class:`divak.Runner` calls it at start-up.

    :param application: any Tornado application
    :returns: :data:`True` when the spans go to the log
    """
    instrumentation = getattr(application, "divak_instrumentation", None)
    if instrumentation is None or instrumentation.reporters or _exporter_configured():
        return False
    _warn_once(
        "no-exporter",
        "no reporter configured: spans go to the log (logger divak.spans); "
        "set OTEL_EXPORTER_ZIPKIN_ENDPOINT (or OTEL_TRACES_EXPORTER) "
        "to export them",
    )
    return True


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """The ``OTEL_BSP_*`` batch processor settings; the span queue reads
    the sizes and the delay itself, the export timeout is exposed here.

    .. attribute:: max_queue_size

       ``OTEL_BSP_MAX_QUEUE_SIZE``: spans that may wait (default 2048).

    .. attribute:: max_export_batch_size

       ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``: spans per upload (divak's
       default 64, the specification's 512).

    .. attribute:: schedule_delay

       ``OTEL_BSP_SCHEDULE_DELAY``: seconds between uploads (the variable
       is in milliseconds; divak's default is 1 s, the specification's 5 s:
       spans reach the collector sooner, in the same batches under load).

    .. attribute:: export_timeout

       ``OTEL_BSP_EXPORT_TIMEOUT``: seconds one export may take (default
       30; the variable is in milliseconds).
    """

    max_queue_size: int
    max_export_batch_size: int
    schedule_delay: float
    export_timeout: float


def batch_settings() -> BatchSettings:
    """Read the ``OTEL_BSP_*`` variables; invalid values are logged and ignored.

    :returns: a :class:`BatchSettings` with the specification's defaults
        for what is not set
    """
    return BatchSettings(
        max_queue_size=integer_variable("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        max_export_batch_size=integer_variable("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 64),
        schedule_delay=_milliseconds("OTEL_BSP_SCHEDULE_DELAY", 1.0),
        export_timeout=_milliseconds("OTEL_BSP_EXPORT_TIMEOUT", 30.0),
    )
