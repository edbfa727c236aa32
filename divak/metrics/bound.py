"""Pre-bound recording: an attribute set's aggregations, recorded into directly.

The SDK's public ``Histogram.record`` costs 6 to 20 µs of CPU per call: it
builds a ``Measurement`` that cleans and copies the attribute dict, asks
the exemplar filter, then every reader's storage hashes the attributes to
find the aggregation of the set.  A request of a route divak has seen
before records into the same few aggregation objects every time, so
:class:`BoundHistogram` finds them once, at an attribute set's first
measurement, and then hands each later measurement straight to them: one
``Measurement`` without attributes and one ``aggregate`` call per
aggregation, about 3 µs.  The ``MeterProvider`` stays the owner of
instruments, readers, views and exporters; collection, temporality and
exemplars are the SDK's own.

This uses OpenTelemetry SDK internals (the same in SDK 1.30 to 1.45):

* the histogram's ``_measurement_consumer``, its ``_reader_storages``
  (a mapping replaced as a whole when a reader is added or removed) and
  ``_sdk_config.exemplar_filter``;
* each reader storage's ``_instrument_view_instrument_matches`` (the view
  matches of the histogram), and each match's ``_view._attribute_keys``
  and ``_attributes_aggregation`` (its aggregations, in the order they
  were made);
* each aggregation's ``_attributes`` and ``aggregate(measurement,
  should_sample_exemplar)``;
* ``opentelemetry.sdk.metrics._internal.measurement.Measurement``.

The first measurement of a set always goes through ``Histogram.record``;
the aggregations it made (or found), one per view match of every reader,
are the set's.  Every measurement goes through ``Histogram.record``
instead, and one DEBUG line says why, when:

* the provider is not the application's own (an adopted global provider
  may have views, readers or a meter configuration divak does not know);
* the histogram is not an SDK histogram, an internal above is missing or
  not as described (any exception while binding), or the exemplar filter
  is not one of the SDK's three;
* a view filters the histogram's attributes;
* binding did not find exactly one aggregation of the set in every view
  match (that set only).

When the readers change after binding (a reader added or removed at run
time), the next measurement of each set binds again.  A meter disabled
later through the SDK's experimental meter configurator (a private
``MeterProvider`` method; divak's own providers have none) is not seen
by sets already bound.  A value the SDK
would refuse (negative, infinite, not a number) goes to
``Histogram.record``, which refuses it and says so.

Exemplars follow the provider's exemplar filter
(``OTEL_METRICS_EXEMPLAR_FILTER``), read once: ``trace_based`` (the
default) offers the measurement to the reservoir when the request's span
is sampled, ``always_on`` always, ``always_off`` never.  The exemplars
of a pre-bound measurement carry no filtered attributes (the SDK's carry
an empty set: every attribute of the measurement is the point's).
"""

from __future__ import annotations

import logging
import math
import time
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Histogram,
    TraceBasedExemplarFilter,
)

try:
    from opentelemetry.sdk.metrics._internal.measurement import (
        Measurement as _Measurement,
    )
except ImportError:  # an SDK that moved it: every record is public
    _Measurement = None  # type: ignore[assignment,misc]

__all__ = ["BoundHistogram", "BoundSet"]

logger = logging.getLogger("divak.metrics")

Attributes = typing.Mapping[str, typing.Any]

_INF = math.inf
_time_ns = time.time_ns
_get_current = otel_context.get_current
_get_current_span = trace.get_current_span


class _Unbindable(Exception):
    """Why no attribute set of a histogram can be bound."""


class BoundSet:
    """One attribute set of a :class:`BoundHistogram` and its aggregations.

    Made by :meth:`BoundHistogram.set_of`; give it to
    :meth:`BoundHistogram.record`.

    .. attribute:: attributes

       The attribute set (never changed).

    .. attribute:: aggregations

       The SDK aggregations a measurement of the set goes to, one per
       view match of every reader; :data:`None` until the first
       measurement (or after the readers changed).

    .. attribute:: public

       :data:`True` when the set could not be bound: its measurements go
       through ``Histogram.record``.
    """

    __slots__ = ("attributes", "aggregations", "public")

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes
        self.aggregations: tuple[typing.Any, ...] | None = None
        self.public = False


class BoundHistogram:
    """A histogram's attribute sets, each recorded into its aggregations.

    :param name: the instrument's name, for the DEBUG line
    :param histogram: the instrument, from the SDK ``MeterProvider``
        *owned* says
    :param owned: :data:`True` when the provider is the application's own
        (no views, readers and exemplar filter but its own); otherwise
        every measurement goes through ``Histogram.record``

    .. attribute:: name

       The instrument's name.

    .. attribute:: histogram

       The instrument.

    .. attribute:: bindable

       :data:`False` when every measurement goes through
       ``Histogram.record`` (see the module's documentation).
    """

    __slots__ = (
        "name",
        "histogram",
        "bindable",
        "_sets",
        "_consumer",
        "_storages",
        "_exemplars",
        "_told",
    )

    def __init__(self, name: str, histogram: typing.Any, owned: bool) -> None:
        self.name = name
        self.histogram = histogram
        self.bindable = False
        #: The sets, by the identity of their attributes (which they keep).
        self._sets: dict[int, BoundSet] = {}
        self._consumer: typing.Any = None
        #: The reader storages the sets were bound in.
        self._storages: typing.Any = None
        #: The exemplar decision: :data:`None` for the span's sampled flag.
        self._exemplars: bool | None = None
        self._told = False
        try:
            self._exemplars = self._check(owned)
        except (_Unbindable, AttributeError, KeyError, TypeError) as error:
            self._tell(str(error) or repr(error))
            return
        self.bindable = True

    def _check(self, owned: bool) -> bool | None:
        if not owned:
            raise _Unbindable("the MeterProvider is not the application's own")
        if _Measurement is None:
            raise _Unbindable("the SDK has no Measurement where expected")
        if not isinstance(self.histogram, Histogram):
            raise _Unbindable("not an SDK histogram")
        consumer: typing.Any = self.histogram._measurement_consumer
        exemplar_filter = type(consumer._sdk_config.exemplar_filter)
        self._storages = consumer._reader_storages
        self._consumer = consumer
        if exemplar_filter is TraceBasedExemplarFilter:
            return None
        if exemplar_filter is AlwaysOnExemplarFilter:
            return True
        if exemplar_filter is AlwaysOffExemplarFilter:
            return False
        raise _Unbindable(f"the exemplar filter {exemplar_filter.__name__}")

    def _tell(self, reason: str) -> None:
        if not self._told:
            self._told = True
            logger.debug(
                "%s is recorded through Histogram.record: %s",
                self.name,
                reason,
            )

    def set_of(self, attributes: Attributes) -> BoundSet:
        """The :class:`BoundSet` of *attributes*, made the first time.

        :param attributes: an attribute set that is never changed and
            stays the same object for the same set (e.g. from
            :class:`~divak.metrics.series.Series`): sets are told apart by
            identity, so there are as many as the series allows
        """
        bound = self._sets.get(id(attributes))
        if bound is None:
            bound = self._sets[id(attributes)] = BoundSet(attributes)
        return bound

    def record(
        self,
        bound: BoundSet,
        value: float,
        context: otel_context.Context | None = None,
        sampled: bool | None = None,
    ) -> None:
        """Record *value* under *bound*'s attributes.

        As ``Histogram.record(value, bound.attributes, context)``, straight
        into the set's aggregations once they are known.

        :param bound: from :meth:`set_of` of this histogram
        :param value: the measurement (seconds for a duration)
        :param context: the measurement's context (its span becomes the
            exemplar); default: the current one
        :param sampled: whether the span of *context* is sampled, when the
            caller knows; otherwise read from *context* when the exemplar
            filter needs it
        """
        aggregations = bound.aggregations
        if (
            aggregations is not None
            and self._consumer._reader_storages is self._storages
            and 0.0 <= value < _INF
        ):
            exemplar = self._exemplars
            if exemplar is None:
                if sampled is None:
                    sampled = (
                        _get_current_span(context)
                        .get_span_context()
                        .trace_flags.sampled
                    )
                exemplar = sampled
            measurement = _Measurement(
                value, _time_ns(), self.histogram, context or _get_current(), None
            )
            for aggregation in aggregations:
                aggregation.aggregate(measurement, exemplar)
            return
        self._record_and_bind(bound, value, context)

    def _record_and_bind(
        self, bound: BoundSet, value: float, context: otel_context.Context | None
    ) -> None:
        """Record through ``Histogram.record``, then find *bound*'s aggregations."""
        self.histogram.record(value, bound.attributes, context)
        if not self.bindable or bound.public or not 0.0 <= value < _INF:
            return
        try:
            storages = self._consumer._reader_storages
            if storages is not self._storages:
                # A reader was added or removed: every set binds again.
                self._storages = storages
                for other in list(self._sets.values()):
                    other.aggregations = None
            bound.aggregations = self._find(bound.attributes, storages)
        except Exception as error:  # noqa: BLE001 - costs the binding, never a request
            self.bindable = False
            for other in list(self._sets.values()):
                other.aggregations = None
            self._tell(str(error) or repr(error))
            return
        if bound.aggregations is None:
            bound.public = True
            self._tell(f"no single aggregation of {dict(bound.attributes)}")

    def _find(
        self, attributes: Attributes, storages: typing.Any
    ) -> tuple[typing.Any, ...] | None:
        """The aggregation of *attributes* in every view match of every
        reader storage, or :data:`None` when one has not exactly one."""
        wanted = dict(attributes)
        found = []
        for storage in list(storages.values()):
            matches = storage._instrument_view_instrument_matches.get(
                self.histogram, ()
            )
            for match in matches:
                if match._view._attribute_keys is not None:
                    raise _Unbindable("a view filters its attributes")
                made = match._attributes_aggregation
                if not made:
                    return None
                # A set's first measurement made its aggregation last.
                newest = next(reversed(made.values()))
                if newest._attributes == wanted:
                    found.append(newest)
                    continue
                same = [a for a in list(made.values()) if a._attributes == wanted]
                if len(same) != 1:
                    return None
                found.append(same[0])
        return tuple(found) or None
