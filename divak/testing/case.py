"""Helpers for testing services built with divak.

* :class:`RecordingLogHandler`: keeps log records (as divak-tornado's);
* :class:`SpanRecorder`: an in-memory reporter with look-up helpers;
* :class:`DivakTestCase` (alias :class:`SprocketsHttpTestCase`): starts
  and stops the application around each test, records its spans in memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import typing

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from tornado import ioloop, testing, web

from divak.export.queue import SpanQueue
from divak.lifecycle.application import CallbackManager
from divak.tracing.recorder import Recorder

__all__ = [
    "DivakTestCase",
    "LifeCycle",
    "RecordingLogHandler",
    "SpanRecorder",
    "SprocketsHttpTestCase",
]


class RecordingLogHandler(logging.Handler):
    """A :class:`logging.Handler` that keeps every record it handles.

    .. attribute:: records

       :class:`list` of the :class:`logging.LogRecord` objects handled.
    """

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep *record*."""
        self.records.append(record)


class SpanRecorder(SpanExporter):
    """A reporter that keeps finished spans in memory.

    Add it with :meth:`divak.Recorder.add_divak_reporter` (
    :class:`DivakTestCase` does); spans arrive after the batch processor's
    delay, or at once after :meth:`divak.Recorder.divak_force_flush`.
    Thread-safe: the batch processor exports from its own thread.

    .. attribute:: spans

       :class:`list` of :class:`~opentelemetry.sdk.trace.ReadableSpan`, in
       the order they were exported.
    """

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._lock = threading.Condition()

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Keep *spans*."""
        with self._lock:
            self.spans.extend(spans)
            self._lock.notify_all()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release; the spans stay available."""

    def clear(self) -> None:
        """Forget every span recorded so far."""
        with self._lock:
            self.spans.clear()

    def find(
        self,
        name: str | None = None,
        *,
        trace_id: int | str | None = None,
        kind: trace.SpanKind | None = None,
        parent: ReadableSpan | None = None,
        attributes: typing.Mapping[str, typing.Any] | None = None,
    ) -> list[ReadableSpan]:
        """Return the spans matching every given criterion.

        :param name: the span name, e.g. ``"GET /greeting/{name}"``
        :param trace_id: the trace, an :class:`int` or 32 hex digits
        :param kind: e.g. :attr:`opentelemetry.trace.SpanKind.SERVER`
        :param parent: only the direct children of this span
        :param attributes: attribute values the span must have
        """
        wanted_trace = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        with self._lock:
            spans = list(self.spans)
        return [
            span
            for span in spans
            if (name is None or span.name == name)
            and (wanted_trace is None or span.context.trace_id == wanted_trace)
            and (kind is None or span.kind == kind)
            and (
                parent is None
                or (
                    span.parent is not None
                    and span.parent.span_id == parent.context.span_id
                )
            )
            and all(
                (span.attributes or {}).get(key) == value
                for key, value in (attributes or {}).items()
            )
        ]

    def one(self, name: str | None = None, **criteria: typing.Any) -> ReadableSpan:
        """Return the only span matching :meth:`find`'s criteria.

        :raises AssertionError: when none or several match
        """
        found = self.find(name, **criteria)
        if len(found) != 1:
            names = sorted(span.name for span in self.spans)
            raise AssertionError(
                f"expected one span matching {name!r} {criteria}, found "
                f"{len(found)}; recorded: {names}"
            )
        return found[0]

    def named(self, name: str) -> list[ReadableSpan]:
        """Return the spans called *name*."""
        return self.find(name)

    def in_trace(self, trace_id: int | str) -> list[ReadableSpan]:
        """Return the spans of one trace (an :class:`int` or 32 hex digits)."""
        return self.find(trace_id=trace_id)

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        """Return the direct children of *span*."""
        return self.find(parent=span)

    def wait_for(
        self,
        predicate: typing.Callable[[list[ReadableSpan]], bool],
        timeout: float = 10.0,
    ) -> list[ReadableSpan]:
        """Block until ``predicate(spans)`` is true; return the spans.

        For spans exported by another thread; in a test on the IOLoop
        thread, flush the application instead.

        :param predicate: called with a copy of the recorded spans
        :param timeout: seconds to wait at most
        :raises TimeoutError: when the predicate is still false
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self.spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self.spans)} spans recorded, condition unmet"
                    )
                self._lock.wait(remaining)
            return list(self.spans)


@typing.runtime_checkable
class LifeCycle(typing.Protocol):
    """What :class:`DivakTestCase` calls on the application under test.

    sprockets.http's synchronous life-cycle API: a
    :class:`divak.CallbackManager` (:class:`divak.Application`) has it, and
    so has a test double that wraps one (``mock.Mock(wraps=app)``, which
    :meth:`DivakTestCase.get_app` may set as :attr:`DivakTestCase.app`).
    """

    def start(self, io_loop: ioloop.IOLoop) -> None:
        """Run the ``before_run`` callbacks, spawn the ``on_start`` ones."""

    def stop(
        self, io_loop: ioloop.IOLoop, shutdown_limit: float, wait_timeout: float
    ) -> None:
        """Run the shutdown callbacks (at most *shutdown_limit* seconds),
        then stop *io_loop*."""


class DivakTestCase(testing.AsyncHTTPTestCase):
    """An :class:`~tornado.testing.AsyncHTTPTestCase` for divak applications.

    Override :meth:`get_app` as usual.  As sprockets.http's
    ``SprocketsHttpTestCase``, :meth:`setUp` calls
    ``self.app.start(self.io_loop)`` (:meth:`divak.CallbackManager.start`;
    the spawned ``on_start`` callbacks run up to their first wait, then
    ``ready_to_serve`` is set) and :meth:`tearDown` calls
    ``self.app.stop(self.io_loop, self.shutdown_limit, self.wait_timeout)``
    and runs the IOLoop until the application stops it (a ``stop`` that
    never does, a mock's, is cut after :attr:`shutdown_limit` plus 2 s).

    For a :class:`divak.Recorder` application it records the spans in
    memory, in :attr:`spans` (a :class:`SpanRecorder`), and sends them
    nowhere else: the reporters the application configured for
    production (:meth:`~divak.Recorder.add_divak_reporter`, or
    ``OTEL_TRACES_EXPORTER``) are replaced by :attr:`spans` before the
    application's tracing starts, and shut down unused.  Reporters that
    keep spans in memory themselves (a :class:`SpanRecorder`, the SDK's
    ``InMemorySpanExporter``) are kept.  Set :attr:`keep_reporters` to
    keep the application's reporters as well (a test of what reaches a
    collector).  The reporters are shut down after each test, so no
    export thread outlives its test; :meth:`flush_spans` waits on
    :attr:`spans` only.  Spans a provider the process set exports through
    exporters of its own (``opentelemetry-instrument``) are that
    provider's business, not the application's.

    Works with any :class:`tornado.web.Application`; the steps that need
    the divak mix-ins are skipped for applications without them (start and
    stop for one that is not a :class:`LifeCycle`, such as a
    :class:`~divak.CallbackManager`; the spans for one that is not a
    :class:`~divak.Recorder`).  Kept
    under sprockets.http's name :class:`SprocketsHttpTestCase` too; as
    there, :meth:`get_app` may set :attr:`app`.

    .. attribute:: app

       The application under test.

    .. attribute:: spans

       The :class:`SpanRecorder` of this test.
    """

    #: Keep the reporters the application configured, next to :attr:`spans`
    #: (by default the test's spans reach :attr:`spans` only).
    keep_reporters: bool = False
    #: Seconds the shutdown callbacks may take at most.
    shutdown_limit: float = 0.25
    #: Seconds between checks while stopping (passed on to ``app.stop``).
    wait_timeout: float = 0.05

    def setUp(self) -> None:
        """Build and start the application, record its spans."""
        self.app: typing.Any = None
        self.spans = SpanRecorder()
        super().setUp()
        # What get_app returned, as Tornado's test case serves it.
        self._served: typing.Any = self.http_server.request_callback
        if self.app is None:
            self.app = self._served
        self._record_spans(self._served)  # any HTTPServer callback
        app = self.app
        if isinstance(app, LifeCycle):
            app.start(self.io_loop)
            # Let the spawned on_start callbacks run up to their first wait.
            self.io_loop.run_sync(lambda: asyncio.sleep(0))
        if isinstance(app, CallbackManager) and not app.owns_readiness:
            app.ready_to_serve.set()

    def _record_spans(self, app: typing.Any) -> None:
        if not isinstance(app, Recorder):
            return
        instrumentation = app.divak_instrumentation
        keep = self.keep_reporters
        if instrumentation.started:  # tracing already started in get_app
            queues = instrumentation.span_queues  # the list its spans go to
            stopped = [q for q in queues if not (keep or _in_memory(q.reporter))]
            queues[:] = [q for q in queues if q not in stopped]
            queues.append(SpanQueue(self.spans))
            for queue in stopped:
                queue.reporter.shutdown()  # its pending spans fail at once
                queue.shutdown()
            return
        reporters = instrumentation.reporters
        unused = [r for r in reporters if not (keep or _in_memory(r))]
        reporters[:] = [r for r in reporters if r not in unused]
        reporters.append(self.spans)
        for reporter in unused:
            reporter.shutdown()

    def tearDown(self) -> None:
        """Stop the application, shut its reporters down, stop the server."""
        try:
            if isinstance(self.app, LifeCycle):
                loop = self.io_loop
                self.app.stop(loop, self.shutdown_limit, self.wait_timeout)
                cut = loop.call_later(self.shutdown_limit + 2, loop.stop)  # a mock's
                loop.start()  # until app.stop stops it
                loop.remove_timeout(cut)
        finally:
            if isinstance(self._served, Recorder):
                self._served.divak_shutdown()
            super().tearDown()

    def get_app(self) -> web.Application:
        """Return the application to test; override it."""
        raise NotImplementedError

    def flush_spans(self, timeout: float = 5.0) -> list[ReadableSpan]:
        """Hand every finished span to :attr:`spans` (only); return them.

        Call it from the test method, not from a coroutine on the IOLoop.

        :param timeout: seconds to wait at most
        :raises AssertionError: when the spans were not recorded in time
        """
        flushed = True
        if isinstance(self._served, Recorder):
            for queue in self._served.divak_span_queues:
                if queue.reporter is self.spans:
                    flushed = queue.force_flush(int(timeout * 1000))
        assert flushed, "spans not recorded in time"
        return list(self.spans.spans)


def _in_memory(reporter: SpanExporter) -> bool:
    """Whether *reporter* keeps spans in the process (a test's own reporter)."""
    return isinstance(reporter, (SpanRecorder, InMemorySpanExporter))


#: sprockets.http's name for :class:`DivakTestCase`.
SprocketsHttpTestCase = DivakTestCase
