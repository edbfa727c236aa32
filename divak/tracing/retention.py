"""Retention: failed and slow requests exported although the sampler dropped them.

At a low sampling rate the one request an operator looks for, the one that
failed or took seconds, is almost never exported.  Tail sampling in a
collector solves that for a whole system; an application can do the
useful part itself, because it knows at the end of a request how the
request went.  A request the sampler did not sample is *retained* when

* it failed (``errors``): its response had a 5xx status, or an unexpected
  exception escaped its handler (what marks a sampled span ERROR);
* or it was slow (``slow``): its response took at least that many seconds
  from the request's arrival.

Its SERVER span is then exported anyway, as the sampled span would have
been: the request's own trace id and span id, start time, duration,
attributes (computed now, at the end), exception event and status, plus
``divak.retained`` (``"error"`` or ``"slow"``), with the spans of the
``record_operation`` blocks that ended before its response (at most
:data:`~divak.context.MAX_OPERATION_RECORDS`).

What this module holds:

* :class:`RetentionPolicy`, the configuration, and
  :func:`retention_policy`, which reads it from the application's
  settings and the environment;
* :class:`Retention`, an application's policy at work: which requests it
  keeps (:meth:`~Retention.reason`), how many per second
  (:meth:`~Retention.admit`, a token bucket) and the
  :class:`~opentelemetry.sdk.trace.ReadableSpan` objects it exports
  (:meth:`~Retention.spans`).

The request's :class:`~divak.tracing.pipeline.RequestPipeline` asks it
when an unsampled request's response is finished, and hands the spans to
the application's span queues.  Retention is local: the decision is taken
at the end, so the headers the request sent downstream said "not
sampled", and so did its log records; see :doc:`tracing`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
import typing

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import httputil

from divak.context import OperationRecords, RequestContext
from divak.logs.ratelimit import RateLimitedLog
from divak.metrics.instruments import ApplicationMetrics
from divak.settings import parse_bool, setting
from divak.version import __version__

__all__ = [
    "ERROR",
    "RETAINED",
    "SLOW",
    "Retention",
    "RetentionPolicy",
    "new_retention",
    "retention_policy",
]

logger = logging.getLogger("divak.retention")

#: The SERVER span attribute that says why an unsampled request was exported.
RETAINED = "divak.retained"
#: :data:`RETAINED` of a request that failed (5xx, unexpected exception).
ERROR = "error"
#: :data:`RETAINED` of a request that took at least the slow threshold.
SLOW = "slow"
#: The SERVER span attribute counting the operations not kept, beyond
#: :data:`~divak.context.MAX_OPERATION_RECORDS`.
OPERATIONS_DROPPED = "divak.retained.operations_dropped"

_SCOPE = InstrumentationScope("divak", __version__)
_SAMPLED = trace.TraceFlags.SAMPLED


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """Which unsampled requests an application exports anyway.

    :param errors: keep requests answered with a 5xx status or whose
        handler raised an unexpected exception
    :param slow: keep requests whose response took at least this many
        seconds; :data:`None` for no threshold
    :param max_per_second: most requests retained per second, on average
        (bursts of as many at once); the others are counted in
        ``divak.retention.dropped``; ``0`` keeps none
    :raises ValueError: for a negative *slow* or *max_per_second*
    """

    errors: bool = True
    slow: float | None = None
    max_per_second: float = 10.0

    def __post_init__(self) -> None:
        if self.slow is not None and not self.slow >= 0:
            raise ValueError(
                f"slow must be a number of seconds >= 0, not {self.slow!r}"
            )
        if not self.max_per_second >= 0:
            raise ValueError(
                f"max_per_second must be a number >= 0, not {self.max_per_second!r}"
            )

    @property
    def enabled(self) -> bool:
        """:data:`True` when some request can be retained."""
        return self.errors or self.slow is not None


def retention_policy(settings: typing.Mapping[str, typing.Any]) -> RetentionPolicy:
    """The policy the application's *settings* and the environment ask for.

    Each value is the setting when set, else the environment variable,
    else the default (see :func:`divak.settings.setting`):

    ====================================  ====================================  =======
    setting                               environment variable                  default
    ====================================  ====================================  =======
    ``divak_retention_errors``            ``DIVAK_RETENTION_ERRORS``            true
    ``divak_retention_slow`` (seconds)    ``DIVAK_RETENTION_SLOW``              none
    ``divak_retention_max_per_second``    ``DIVAK_RETENTION_MAX_PER_SECOND``    10
    ====================================  ====================================  =======

    :raises ValueError: naming the setting or variable with an invalid value
    """
    errors, source = setting(
        settings, "divak_retention_errors", "DIVAK_RETENTION_ERRORS", True
    )
    slow = _number(
        *setting(settings, "divak_retention_slow", "DIVAK_RETENTION_SLOW", None)
    )
    rate = _number(
        *setting(
            settings,
            "divak_retention_max_per_second",
            "DIVAK_RETENTION_MAX_PER_SECOND",
            10.0,
        )
    )
    return RetentionPolicy(
        parse_bool(errors, source), slow, 10.0 if rate is None else rate
    )


def _number(value: typing.Any, source: str) -> float | None:
    """*value* (a setting or a variable named *source*) as a number >= 0."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("", "none"):
            return None
        try:
            number = float(text)
        except ValueError:
            number = -1.0
    if not number >= 0:
        raise ValueError(f"{source} must be a number >= 0, not {value!r}")
    return number


class Retention:
    """An application's :class:`RetentionPolicy` at work.

    Made by :func:`new_retention`; the application's
    :class:`~divak.tracing.instrumentation.Instrumentation` holds it.
    Called on the IOLoop at the end of every unsampled request (the token
    bucket is also safe from other threads).

    :param policy: what to retain
    :param max_attribute_length: characters kept of each attribute value
        (``settings['divak_max_attribute_length']``), :data:`None` for the
        OpenTelemetry default (``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``)

    .. attribute:: retained

       Requests exported so far (:class:`int`).

    .. attribute:: dropped

       Requests that qualified but exceeded ``max_per_second`` (:class:`int`).
    """

    def __init__(
        self, policy: RetentionPolicy, max_attribute_length: int | None = None
    ) -> None:
        self.policy = policy
        self.errors = policy.errors
        #: Whether a slow threshold is set, and the threshold in seconds.
        self.slow_threshold = policy.slow is not None
        self.slow = policy.slow or 0.0
        self.retained = 0
        self.dropped = 0
        self._limits = SpanLimits(max_span_attribute_length=max_attribute_length)
        self._rate = policy.max_per_second
        # A bucket of at least one token, so that a rate below one per
        # second still lets a request through now and then; none at 0.
        self._capacity = max(self._rate, 1.0) if self._rate > 0 else 0.0
        self._tokens = self._capacity
        self._refilled = time.monotonic()
        self._lock = threading.Lock()
        self._complain = RateLimitedLog(logger, interval=60.0)

    # -- the decision -----------------------------------------------------
    def reason(
        self,
        status_code: int | None,
        exception_type: str | None,
        request: httputil.HTTPServerRequest,
    ) -> str | None:
        """Why a finished, unsampled request is retained, or :data:`None`.

        :param status_code: the response's status
        :param exception_type: ``error.type`` of the unexpected exception
            the handler raised, or :data:`None`
        :param request: the request, whose response was just finished (its
            duration is read only with a slow threshold)
        :returns: :data:`ERROR`, :data:`SLOW` or :data:`None` (an error
            wins over slowness)
        """
        if self.errors and (
            exception_type is not None
            or (status_code is not None and status_code >= 500)
        ):
            return ERROR
        if self.slow_threshold and request.request_time() >= self.slow:
            return SLOW
        return None

    def admit(self, reason: str, metrics: ApplicationMetrics) -> bool:
        """Take one request's token; :data:`False` past ``max_per_second``.

        A token bucket of ``max_per_second`` tokens (at least one), refilled
        at ``max_per_second`` per second.  A request refused is counted in
        ``divak.retention.dropped`` (attribute ``divak.retained`` =
        *reason*) and logged, one WARNING a minute at most.

        :param reason: :data:`ERROR` or :data:`SLOW`
        :param metrics: the application's metrics
        """
        now = time.monotonic()
        with self._lock:
            tokens = min(
                self._capacity, self._tokens + (now - self._refilled) * self._rate
            )
            self._refilled = now
            admitted = tokens >= 1.0
            self._tokens = tokens - 1.0 if admitted else tokens
            if admitted:
                self.retained += 1
            else:
                self.dropped += 1
        if not admitted:
            metrics.count_retention_dropped(reason)
            self._complain(
                logging.WARNING,
                "not exporting a %s request the sampler dropped: more than %g "
                "retained requests per second (max_per_second of "
                "set_divak_retention); counted in divak.retention.dropped",
                reason,
                self._rate,
            )
        return admitted

    # -- the spans --------------------------------------------------------
    def spans(
        self,
        request_context: RequestContext,
        *,
        name: str,
        attributes: dict[str, typing.Any],
        reason: str,
        start_time: int,
        end_time: int,
        resource: Resource,
    ) -> list[ReadableSpan]:
        """The retained request's SERVER span and its operations' spans.

        The SERVER span has the request's trace id, span id, parent and
        trace state, and the sampled flag set: the copy exported was
        recorded (span queues and OpenTelemetry's processors export only
        sampled spans), while everything the request said during its life
        — headers sent downstream, log records, ``traceparent`` answered —
        said "not sampled".  Its status is ERROR with ``error.type`` for a
        5xx or an exception, as a sampled span's; its exception event is
        the one a sampled span gets (SDK format), stamped with *end_time*.

        :param request_context: the finished request (its
            :attr:`~divak.context.RequestContext.exception` and
            :attr:`~divak.context.RequestContext.operations` are read)
        :param name: the SERVER span's name (``GET /items/{item_id}``)
        :param attributes: its attributes so far (the request's semantic
            convention attributes, status code, ``error.type``); updated
        :param reason: :data:`ERROR` or :data:`SLOW`
        :param start_time: the request's arrival, ns since the epoch
        :param end_time: its response, ns since the epoch
        :param resource: the application's resource (``service.name``)
        """
        span_context = request_context.span.get_span_context()
        flags = trace.TraceFlags(span_context.trace_flags | _SAMPLED)
        context = trace.SpanContext(
            span_context.trace_id,
            span_context.span_id,
            is_remote=False,
            trace_flags=flags,
            trace_state=span_context.trace_state,
        )
        parent: trace.SpanContext | None = trace.get_current_span(
            request_context.parent
        ).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        attributes[RETAINED] = reason
        operations = request_context.operations
        if operations is not None and operations.dropped:
            attributes[OPERATIONS_DROPPED] = operations.dropped
        exception = request_context.exception
        events: tuple[Event, ...] = ()
        if exception is not None:
            events = (self._event(exception, end_time),)
        status = (
            Status(StatusCode.ERROR)
            if "error.type" in attributes
            else Status(StatusCode.UNSET)
        )
        made = [
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=resource,
                attributes=self._bounded(attributes),
                events=events,
                kind=SpanKind.SERVER,
                status=status,
                start_time=start_time,
                end_time=end_time,
                instrumentation_scope=_SCOPE,
            )
        ]
        if operations is not None:
            made.extend(self._operations(operations, context, resource))
        return made

    def _operations(
        self,
        operations: OperationRecords,
        server: trace.SpanContext,
        resource: Resource,
    ) -> typing.Iterator[ReadableSpan]:
        """The INTERNAL spans of the request's recorded operations."""
        trace_id, flags, state = server.trace_id, server.trace_flags, server.trace_state
        for record in operations:
            exception = record.exception
            events: tuple[Event, ...] = ()
            if exception is None:
                status = Status(StatusCode.UNSET)
            else:
                # As OpenTelemetry's use_span marks a span an exception left.
                status = Status(
                    StatusCode.ERROR, f"{type(exception).__name__}: {exception}"
                )
                events = (self._event(exception, record.end_time),)
            span_id = record.span.get_span_context().span_id
            parent_id = trace.get_current_span(record.parent).get_span_context().span_id
            yield ReadableSpan(
                name=record.name,
                context=trace.SpanContext(trace_id, span_id, False, flags, state),
                parent=trace.SpanContext(trace_id, parent_id, False, flags, state),
                resource=resource,
                attributes=self._bounded(dict(record.attributes or {})),
                events=events,
                kind=SpanKind.INTERNAL,
                status=status,
                start_time=record.start_time,
                end_time=record.end_time,
                instrumentation_scope=_SCOPE,
            )

    def _bounded(self, attributes: dict[str, typing.Any]) -> BoundedAttributes:
        limits = self._limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=True,
            max_value_len=limits.max_span_attribute_length,
        )

    def _event(self, exception: BaseException, timestamp: int) -> Event:
        """The ``exception`` event, as the SDK's ``Span.record_exception`` makes it."""
        kind = type(exception)
        module = kind.__module__
        limits = self._limits
        return Event(
            "exception",
            BoundedAttributes(
                limits.max_event_attributes,
                {
                    "exception.type": f"{module}.{kind.__qualname__}"
                    if module and module != "builtins"
                    else kind.__qualname__,
                    "exception.message": str(exception),
                    "exception.stacktrace": "".join(
                        traceback.format_exception(exception)
                    ),
                    "exception.escaped": "False",
                },
                immutable=True,
                max_value_len=limits.max_attribute_length,
            ),
            timestamp,
        )


def new_retention(
    settings: typing.Mapping[str, typing.Any], policy: RetentionPolicy | None = None
) -> Retention | None:
    """An application's :class:`Retention`, or :data:`None` when it keeps nothing.

    :param settings: the application's settings (for the attribute length
        limit and, without *policy*, the policy: :func:`retention_policy`)
    :param policy: the policy given in code
        (:meth:`divak.Recorder.set_divak_retention`), which wins over the
        settings and the environment
    :raises ValueError: for an invalid setting or variable
    """
    if policy is None:
        policy = retention_policy(settings)
    if not policy.enabled:
        return None
    return Retention(policy, settings.get("divak_max_attribute_length"))
