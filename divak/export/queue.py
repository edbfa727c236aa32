"""The span queue between an application's tracer and each reporter.

:class:`SpanQueue` is the span processor in front of every reporter: a
bounded queue (in spans and bytes) filled on the thread that ends spans,
emptied in batches by a background thread.  Spans that do not fit are
dropped and counted, never logged one by one; the queue is the one place
that counts exported, failed and dropped spans.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import typing
import weakref

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from divak.logs.ratelimit import RateLimitedLog, describe_error, safe_log
from divak.settings import integer_variable, milliseconds_variable

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "BatchSettings",
    "RetryingReporter",
    "SpanQueue",
    "batch_settings",
    "estimate_span_size",
]

logger = logging.getLogger("divak.reporters")

#: Bytes of span data that may wait in one queue (16 MiB), unless the
#: ``DIVAK_SPAN_QUEUE_MAX_BYTES`` environment variable says otherwise.
DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024

_SPAN_OVERHEAD = 320  # ids, times, kind, status, the objects themselves
_ITEM_OVERHEAD = 16  # per attribute, event or link


def _mapping_size(mapping: typing.Mapping[str, typing.Any] | None) -> int:
    if not mapping:
        return 0
    try:
        # A span's attributes are a read-only view of the SDK's
        # BoundedAttributes: its copy() copies the underlying dict in one
        # call, where reading it as a Mapping costs a Python-level
        # __getitem__ per item and a locked copy in __iter__.
        items = mapping.copy()  # type: ignore[attr-defined]
    except AttributeError:  # a Mapping without copy()
        items = dict(mapping)
    size = _ITEM_OVERHEAD * len(items) + sum(map(len, items))
    for value in items.values():
        kind = type(value)
        if kind is str:
            size += len(value)
        elif kind is tuple or kind is list:
            size += sum(len(v) if type(v) is str else 8 for v in value)
        else:
            size += 8
    return size


def estimate_span_size(span: ReadableSpan) -> int:
    """A rough size of *span* in bytes, as held in memory and encoded.

    The lengths of the name, of the attribute keys and values (strings and
    sequences of strings count their characters, other values 8), of the
    events and links, plus a fixed overhead per span.  Used to bound the
    :class:`SpanQueue` by bytes; cheap enough to run once per span on the
    thread that ends it (a few microseconds for a server span).

    :param span: a finished span
    :returns: bytes, at least a few hundred
    """
    size = _SPAN_OVERHEAD + len(span.name) + _mapping_size(span.attributes)
    for event in span.events:
        size += _ITEM_OVERHEAD + len(event.name) + _mapping_size(event.attributes)
    for link in span.links:
        size += _ITEM_OVERHEAD + 32 + _mapping_size(link.attributes)
    return size


@typing.runtime_checkable
class RetryingReporter(typing.Protocol):
    """A reporter that retries failed uploads, and can be told to stop.

    :class:`~divak.export.reporters.ZipkinReporter` is one.  When a
    :class:`SpanQueue` shuts down, it calls :meth:`stop_retrying` first, so
    the last batches get one attempt each instead of a collector that is
    down holding the exit up.
    """

    def stop_retrying(self) -> None:
        """Give every upload, the one in progress included, one attempt at most."""


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
        schedule_delay=milliseconds_variable("OTEL_BSP_SCHEDULE_DELAY", 1.0),
        export_timeout=milliseconds_variable("OTEL_BSP_EXPORT_TIMEOUT", 30.0),
    )


class SpanQueue(SpanProcessor):
    """A bounded span queue in front of one reporter, with its own thread.

    The OpenTelemetry SDK's ``BatchSpanProcessor`` does the same job but,
    when its queue is full, builds a log record for every dropped span on
    the thread that ended the span (the IOLoop) and counts nothing.  This
    processor keeps the IOLoop's share to an append:

    * :meth:`on_end` appends a sampled span to a :class:`collections.deque`
      or, when *max_queue_size* spans or *max_queue_bytes* bytes (as
      :func:`estimate_span_size` counts them) are waiting, counts it as
      dropped; nothing else happens on the calling thread;
    * a daemon thread uploads batches of up to *max_batch_size* spans every
      *schedule_delay* seconds, or as soon as a full batch waits, with
      OpenTelemetry's "suppress instrumentation" flag set so uploads are
      never traced;
    * it counts, in one place, the spans exported, failed (the reporter
      answered failure or raised) and dropped;
    * one WARNING is logged when dropping starts (by the first dropped
      span, so even while the worker waits on a dead collector), then the
      worker logs one summary WARNING per *summary_interval* seconds while
      dropping continues (between uploads, so an upload in progress may
      delay it) and one INFO line when a whole interval passed without a
      drop;
    * a reporter that raises is logged at most twice a minute
      (:class:`RateLimitedLog`), and a logging filter or handler that
      raises never stops the thread.

    :class:`divak.Recorder` puts one in front of every reporter.  Memory is
    bounded by *max_queue_size* spans and *max_queue_bytes* bytes, plus the
    batch being sent.  All durations are in seconds.

    .. attribute:: dropped_spans

       Spans dropped because the queue was full (:class:`int`).

    .. attribute:: failed_spans

       Spans the reporter could not deliver (:class:`int`).

    .. attribute:: exported_spans

       Spans the reporter delivered (:class:`int`).
    """

    def __init__(
        self,
        reporter: SpanExporter,
        *,
        max_queue_size: int | None = None,
        max_batch_size: int | None = None,
        schedule_delay: float | None = None,
        summary_interval: float = 60.0,
        max_queue_bytes: int | None = None,
    ) -> None:
        """Start the queue's thread in front of *reporter*.

        The sizes default to OpenTelemetry's batch processor environment
        variables, so existing deployments keep their tuning.

        :param reporter: the
            :class:`~opentelemetry.sdk.trace.export.SpanExporter`
        :param max_queue_size: spans that may wait, more are dropped;
            default ``OTEL_BSP_MAX_QUEUE_SIZE``, else 2048
        :param max_batch_size: spans per upload; default
            ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, else 64 (the specification
            says 512; see ``bench/README.rst`` for why divak's is smaller)
        :param schedule_delay: seconds between uploads when less than a
            batch waits; default ``OTEL_BSP_SCHEDULE_DELAY`` (which the
            OpenTelemetry specification gives in milliseconds), else 1 s
        :param summary_interval: seconds between drop summaries
        :param max_queue_bytes: bytes of spans that may wait, more are
            dropped; default ``DIVAK_SPAN_QUEUE_MAX_BYTES``, else
            :data:`DEFAULT_MAX_QUEUE_BYTES` (16 MiB)
        :raises ValueError: when a size is smaller than 1
        """
        defaults = batch_settings()
        if max_queue_size is None:
            max_queue_size = defaults.max_queue_size
        if max_batch_size is None:
            max_batch_size = defaults.max_export_batch_size
        if schedule_delay is None:
            schedule_delay = defaults.schedule_delay
        if max_queue_bytes is None:
            max_queue_bytes = integer_variable(
                "DIVAK_SPAN_QUEUE_MAX_BYTES", DEFAULT_MAX_QUEUE_BYTES
            )
        if max_queue_size < 1 or max_batch_size < 1 or max_queue_bytes < 1:
            raise ValueError("queue and batch sizes must be positive")
        self.reporter = reporter
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.max_batch_size = min(max_batch_size, max_queue_size)
        self.schedule_delay = schedule_delay
        self.summary_interval = summary_interval
        self.dropped_spans = 0
        self.failed_spans = 0
        self.exported_spans = 0
        self._queue: collections.deque[tuple[ReadableSpan, int]] = collections.deque()
        self._queued_bytes = 0
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._stopping = False
        self._busy = False
        self._dropping_since: float | None = None
        self._reported = 0
        self._announced = False
        self._complain = RateLimitedLog(logger)
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._start()
        after_fork = weakref.WeakMethod(self._after_fork)
        os.register_at_fork(
            after_in_child=lambda: (method := after_fork()) and method()
        )

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._work, name=f"divak-spans-{self.reporter!r}", daemon=True
        )
        self._thread.start()

    def _after_fork(self) -> None:
        # The parent's spans belong to the parent; the child gets a worker.
        self._queue.clear()
        self._queued_bytes = 0
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._busy = False
        self._pid = os.getpid()
        if not self._stopping:
            self._start()

    # -- called by the SDK on the thread that ends a span ------------------
    def on_start(
        self, span: typing.Any, parent_context: otel_context.Context | None = None
    ) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a sampled *span*, or count it as dropped when the queue is full."""
        context = span.context
        if context is None or not context.trace_flags.sampled or self._stopping:
            return
        size = estimate_span_size(span)
        queue = self._queue
        with self._lock:
            full = (
                len(queue) >= self.max_queue_size
                or self._queued_bytes + size > self.max_queue_bytes
            )
            if full:
                self.dropped_spans += 1
                announce = not self._announced
                self._announced = True
            else:
                queue.append((span, size))
                self._queued_bytes += size
        if full:
            if announce:  # once per episode, not per span
                # The queue's warning: not the ids of the request ending now.
                token = otel_context.attach(otel_context.Context())
                try:
                    safe_log(
                        logger,
                        logging.WARNING,
                        "span queue of %r is full (%d spans or %d bytes): dropping"
                        " spans until the reporter catches up; a summary follows"
                        " every %g s",
                        self.reporter,
                        self.max_queue_size,
                        self.max_queue_bytes,
                        self.summary_interval,
                    )
                finally:
                    otel_context.detach(token)
            return
        if len(queue) >= self.max_batch_size:
            self._wake.set()

    # -- the worker ---------------------------------------------------------
    def _work(self) -> None:
        while True:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._export()
                self._report_drops(final=stopping)
            except Exception:  # noqa: BLE001, S110 - the thread must live on
                pass
            if stopping:
                return

    def _report_drops(self, final: bool = False) -> None:
        # Runs on the worker thread only: between batches and after waking.
        dropped = self.dropped_spans
        now = time.monotonic()
        if self._dropping_since is None:
            if dropped > self._reported:  # announced by on_end
                self._dropping_since = now
        elif final or now - self._dropping_since >= self.summary_interval:
            if dropped > self._reported:
                safe_log(
                    logger,
                    logging.WARNING,
                    "dropped %d spans for %r in the last %.0f s (%d in total)",
                    dropped - self._reported,
                    self.reporter,
                    now - self._dropping_since,
                    dropped,
                )
                self._dropping_since, self._reported = now, dropped
            else:
                safe_log(
                    logger,
                    logging.INFO,
                    "%r no longer drops spans (%d dropped in total)",
                    self.reporter,
                    dropped,
                )
                self._dropping_since = None
                with self._lock:
                    self._announced = False

    def _take_batch(self) -> list[ReadableSpan]:
        queue = self._queue
        with self._lock:
            entries = [
                queue.popleft() for _ in range(min(len(queue), self.max_batch_size))
            ]
            self._queued_bytes -= sum(size for _, size in entries)
        return [span for span, _ in entries]

    def _export(self) -> None:
        with self._idle:
            self._busy = True
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        try:
            while self._queue:
                batch = self._take_batch()
                try:
                    result = self.reporter.export(batch)
                except Exception as error:  # noqa: BLE001 - keep the worker alive
                    self._complain(
                        logging.WARNING,
                        "%r failed: %s",
                        self.reporter,
                        describe_error(error),
                    )
                    result = SpanExportResult.FAILURE
                with self._lock:
                    if result is SpanExportResult.SUCCESS:
                        self.exported_spans += len(batch)
                    else:
                        self.failed_spans += len(batch)
                self._report_drops()
        finally:
            otel_context.detach(token)
            with self._idle:
                self._busy = False
                self._idle.notify_all()

    # -- flush and shutdown -------------------------------------------------
    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every span queued now was handed to the reporter.

        Blocks the calling thread; call it off the IOLoop.

        :param timeout: seconds to wait at most
        :returns: :data:`False` when spans were still waiting at the deadline
        """
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """:meth:`flush`, called by OpenTelemetry's ``TracerProvider``.

        The SDK's span processor interface counts in milliseconds; divak's
        own API (:meth:`flush`, :meth:`divak.Recorder.divak_force_flush`)
        counts in seconds.

        :param timeout_millis: milliseconds to wait at most
        :returns: :data:`False` when spans were still waiting at the deadline
        """
        return self.flush(timeout_millis / 1000)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Send what is queued (no more retries), stop the thread, shut the reporter.

        A :class:`RetryingReporter` is told to stop retrying first.

        :param timeout: seconds to wait for the last uploads
        """
        if self._stopping:
            return
        self._stopping = True
        if isinstance(self.reporter, RetryingReporter):
            self.reporter.stop_retrying()
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)
        self.reporter.shutdown()

    @property
    def pending_spans(self) -> int:
        """Spans waiting in the queue now."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Bytes of spans waiting in the queue now (estimated)."""
        return self._queued_bytes
