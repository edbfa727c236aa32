"""The handler mix-in :class:`RequestTracker`: conveniences over the request's context.

The application (:class:`divak.Recorder`) traces every request; this
mix-in gives a handler its :class:`~divak.context.RequestContext`, child
operations, tags, events and values, and a way to run code in a thread
without losing the request's context.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from tornado import httputil

from divak import semconv
from divak.context import OperationRecords, RequestContext, request_context_of

if typing.TYPE_CHECKING:
    from divak.tracing.recorder import Recorder

__all__ = ["RequestTracker"]

_T = typing.TypeVar("_T")


class RequestTracker:
    """Handler mix-in: the request's span, child operations and tags.

    To use it:

    * mix it into a :class:`tornado.web.RequestHandler` subclass;
    * the application mixes in :class:`Recorder` (which traces every
      request, with or without this mix-in: the request's
      :class:`~divak.tracing.pipeline.RequestPipeline` starts and ends the
      span, also marks it with an exception raised after ``finish()``);
    * a handler that overrides ``on_connection_close`` calls ``super()``.

    What it provides:

    * :attr:`divak_context`, the request's
      :class:`~divak.context.RequestContext`;
    * :meth:`record_operation` (child spans), :meth:`add_divak_tag`,
      :meth:`set_divak_name`, :meth:`run_in_divak_executor`,
      :meth:`count_divak_event`, :meth:`record_divak_value`;
    * a client that disconnects while the handler works ends the span at
      once (:meth:`on_connection_close` forwards Tornado's call, which
      only the handler receives, to the pipeline).
    """

    if typing.TYPE_CHECKING:
        application: Recorder
        request: httputil.HTTPServerRequest

    @property
    def divak_context(self) -> RequestContext:
        """The request's :class:`~divak.context.RequestContext`.

        :raises RuntimeError: when the application does not mix in
            :class:`Recorder`
        """
        request_context = request_context_of(self.request)
        if request_context is None:
            raise RuntimeError(
                f"{type(self.application).__qualname__} does not mix in divak.Recorder"
            )
        return request_context

    def on_connection_close(self) -> None:
        """Tell the request's pipeline that the client went away; chain to ``super()``.

        Tornado tells the handler (not the application) when the client
        closes the connection after sending its request; the
        :class:`~divak.tracing.pipeline.RequestPipeline` then ends the span
        at once, with status ERROR, ``error.type`` ``"client_disconnected"``
        and no ``http.response.status_code``, instead of leaving it open
        until (or if ever) the handler finishes.
        """
        request_context = request_context_of(self.request)
        if request_context is not None and request_context.lifecycle is not None:
            request_context.lifecycle.client_disconnected()
        super().on_connection_close()  # type: ignore[misc]

    def set_divak_name(self, name: str) -> None:
        """Rename the request's span (default ``"{METHOD} {route}"``).

        :param name: the new span name; keep it low-cardinality (cut to
            :data:`~divak.semconv.MAX_TEXT_LENGTH` characters)
        """
        self.divak_context.span.update_name(semconv.bounded_text(name))

    @contextlib.contextmanager
    def record_operation(
        self, name: str, attributes: dict[str, typing.Any] | None = None
    ) -> typing.Iterator[trace.Span]:
        """Open an INTERNAL child span for the ``with`` block.

        The span is the current span inside the block (also across
        ``await``), so nested operations and :meth:`add_divak_tag` apply to
        it.  An exception leaving the block is recorded on the span, which
        then has status ERROR, and re-raised.

        Its duration, in seconds, is also recorded into the
        ``divak.operation.duration`` histogram with ``divak.operation.name``
        (sampled or not; see :doc:`metrics`).

        :param name: the operation's name, e.g. ``"query-db"``; keep it
            low-cardinality (cut to :data:`~divak.semconv.MAX_TEXT_LENGTH`
            characters, in the span name and in the metric alike)
        :param attributes: initial span attributes
        :returns: the child span
        """
        name = semconv.bounded_text(name)
        instrumentation = self.application.divak_instrumentation
        request_context = self.divak_context
        context = request_context.current_context()
        started = time.perf_counter()
        try:
            with instrumentation.tracer.start_as_current_span(
                name, context=context, attributes=attributes
            ) as span:
                if (
                    span.is_recording()
                    or instrumentation.retention is None
                    or request_context.ended
                    or request_context.span.is_recording()
                ):
                    yield span
                    return
                # An unsampled request that retention may export at its
                # end: keep a minimal record of the operation.
                start_time = time.time_ns()
                failure: BaseException | None = None
                try:
                    yield span
                except Exception as error:  # as OpenTelemetry's use_span
                    failure = error
                    raise
                finally:
                    if not request_context.ended:  # else judged already
                        operations = request_context.operations
                        if operations is None:
                            operations = OperationRecords()
                            request_context.operations = operations
                        operations.add(
                            name,
                            attributes,
                            span,
                            context,
                            start_time,
                            time.time_ns(),
                            failure,
                        )
        finally:
            instrumentation.metrics.record_operation(
                name, time.perf_counter() - started, otel_context.get_current()
            )

    def count_divak_event(
        self, name: str, value: float = 1, **attributes: typing.Any
    ) -> None:
        """Add *value* to the ``divak.events`` counter ("counting interesting events").

        :param name: ``divak.event.name``, e.g. ``"cache.miss"``
        :param value: a non-negative amount, default 1
        :param attributes: more attributes of the series (bounded in length
            and number, see :mod:`divak.metrics.series`)
        :raises ValueError: when *value* is negative
        """
        self.application.divak_instrumentation.metrics.count_event(
            name, value, attributes
        )

    def record_divak_value(
        self, name: str, value: float, unit: str = "", **attributes: typing.Any
    ) -> None:
        """Record *value* into the histogram *name* (created on first use).

        :param name: the instrument's name, e.g. ``"queue.wait"``
        :param value: the measurement, in *unit*
        :param unit: UCUM unit, e.g. ``"s"`` or ``"By"``
        :param attributes: attributes of the series (bounded)
        """
        self.application.divak_instrumentation.metrics.record_value(
            name, value, unit, attributes, otel_context.get_current()
        )

    def add_divak_tag(self, name: str, value: typing.Any) -> None:
        """Set an attribute on the innermost open operation, else the request span.

        :param name: attribute name; prefer OpenTelemetry semantic
            convention names (cut to :data:`~divak.semconv.MAX_TEXT_LENGTH`
            characters; values are bounded by the provider's span limits)
        :param value: a :class:`str`, :class:`bool`, :class:`int`,
            :class:`float` or a sequence of one of them
        """
        name = semconv.bounded_text(name)
        request_context = self.divak_context
        span = trace.get_current_span()
        if (
            span.get_span_context().trace_id
            != request_context.span.get_span_context().trace_id
        ):
            span = request_context.span
        span.set_attribute(name, value)

    def run_in_divak_executor(
        self,
        executor: typing.Any,
        function: typing.Callable[..., _T],
        *args: typing.Any,
    ) -> asyncio.Future[_T]:
        """Run ``function(*args)`` in *executor* with the request's context.

        :meth:`asyncio.loop.run_in_executor` runs the function with the
        thread's own (empty) context; this runs it in a copy of the
        current one, so its log records carry the request's ids and
        baggage, and its spans nest under the current operation.

        :param executor: a :class:`concurrent.futures.Executor`, or
            :data:`None` for the loop's default executor
        :param function: the callable to run in a thread
        :returns: a future for its result
        """
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(context.run, function, *args)
        )
