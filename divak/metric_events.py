"""What handlers add to an application's metrics: operations, events, values.

:class:`HandlerMeasurements` is the part of
:class:`divak.metrics.ApplicationMetrics` that handlers call (through the
mix-ins' ``record_operation``, ``count_divak_event`` and
``record_divak_value``).
"""

from __future__ import annotations

import logging
import typing

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics

from divak import metric_series

__all__ = [
    "EVENTS",
    "MAX_CUSTOM_INSTRUMENTS",
    "OPERATION_DURATION",
    "HandlerMeasurements",
]

logger = logging.getLogger("divak.metrics")

OPERATION_DURATION = "divak.operation.duration"
EVENTS = "divak.events"
#: Most histograms :meth:`HandlerMeasurements.record_value` creates.
MAX_CUSTOM_INSTRUMENTS = 100

Attributes = metric_series.Attributes


class HandlerMeasurements:
    """Operations, events and values, recorded with bounded attributes.

    Needs from the class it is mixed into: ``enabled`` (:class:`bool`),
    ``meter`` (an OpenTelemetry ``Meter``), ``operation_duration`` and
    ``events`` (the instruments), ``_custom`` (a :class:`dict` for the
    histograms it creates) and ``_series_of(instrument)`` (the
    :class:`~divak.metric_series.Series` of an instrument).
    """

    if typing.TYPE_CHECKING:
        enabled: bool
        meter: otel_metrics.Meter
        operation_duration: otel_metrics.Histogram
        events: otel_metrics.Counter
        _custom: dict[tuple[str, str], otel_metrics.Histogram]

        def _series_of(self, instrument: str) -> metric_series.Series: ...

    def record_operation(
        self,
        name: str,
        seconds: float,
        context: otel_context.Context | None = None,
    ) -> None:
        """Record an operation's duration into ``divak.operation.duration``.

        :param name: ``divak.operation.name``, e.g. ``"query-db"``
        :param seconds: the duration
        :param context: the context of the operation's span (exemplar)
        """
        if not self.enabled:
            return
        attributes = self._series_of(OPERATION_DURATION).bind(
            name, lambda: {"divak.operation.name": metric_series.bounded(name)}
        )
        self.operation_duration.record(seconds, attributes, context)

    def count_event(
        self, name: str, value: int | float = 1, attributes: Attributes | None = None
    ) -> None:
        """Add *value* to the ``divak.events`` counter.

        :param name: ``divak.event.name``, e.g. ``"cache.miss"``
        :param value: a non-negative amount
        :param attributes: more attributes, bounded (see
            :mod:`divak.metric_series`)
        :raises ValueError: when *value* is negative
        """
        if value < 0:
            raise ValueError("an event count cannot be negative")
        if not self.enabled:
            return
        key, build = metric_series.custom_attributes(
            EVENTS, {"divak.event.name": name}, attributes
        )
        bound = self._series_of(EVENTS).bind(key, build)
        self.events.add(value, bound)

    def record_value(
        self,
        name: str,
        value: float,
        unit: str = "",
        attributes: Attributes | None = None,
        context: otel_context.Context | None = None,
        boundaries: typing.Sequence[float] | None = None,
    ) -> None:
        """Record *value* into the histogram *name*, created on first use.

        :param name: the instrument name, e.g. ``"queue.wait"``
        :param value: the measurement
        :param unit: UCUM unit, e.g. ``"s"`` or ``"By"``; with ``"s"`` the
            histogram uses :data:`~divak.metric_series.DURATION_BUCKETS`
        :param attributes: as for :meth:`count_event`
        :param context: the current request's context (exemplar)
        :param boundaries: bucket boundaries, used when the histogram is
            created
        """
        if not self.enabled:
            return
        histogram = self._custom.get((name, unit))
        if histogram is None:
            if len(self._custom) >= MAX_CUSTOM_INSTRUMENTS:
                logger.warning("too many histograms, not recording %s", name)
                return
            if boundaries is None and unit == "s":
                boundaries = metric_series.DURATION_BUCKETS
            histogram = self._custom[(name, unit)] = self.meter.create_histogram(
                name,
                unit=unit,
                description=f"Values of {name} handlers recorded.",
                explicit_bucket_boundaries_advisory=boundaries,
            )
        key, build = metric_series.custom_attributes(name, {}, attributes)
        bound = self._series_of(name).bind(key, build)
        histogram.record(value, bound, context)
