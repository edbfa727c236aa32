"""Process and runtime metrics: CPU, memory, file descriptors, GC, IOLoop lag.

:class:`RuntimeMetrics` adds to an application's ``MeterProvider`` the
process metrics of OpenTelemetry's semantic conventions, observed only when
the metrics are collected (a scrape, a push), so they cost nothing per
request:

======================================  =====================  =========================
instrument                              unit                   attributes
======================================  =====================  =========================
``process.cpu.time``                    ``s``                  ``cpu.mode`` (``user``,
                                                               ``system``)
``process.memory.usage`` (resident)     ``By``
``process.memory.virtual``              ``By``
``process.unix.file_descriptor.count``  ``{file_descriptor}``
``process.thread.count``                ``{thread}``
``cpython.gc.collections``              ``{collection}``       ``cpython.gc.generation``
``cpython.gc.collected_objects``        ``{object}``           ``cpython.gc.generation``
``cpython.gc.uncollectable_objects``    ``{object}``           ``cpython.gc.generation``
======================================  =====================  =========================

and divak's own ``divak.ioloop.lag`` (histogram, seconds): how late a
callback the IOLoop was asked to run at a given time actually ran.  A
handler that blocks the IOLoop (synchronous I/O, a long computation)
delays every other request by that much; this is the signal that shows it.
A probe is scheduled every *interval* seconds on the IOLoop that starts
it (:meth:`RuntimeMetrics.start`); each run records its lateness.
:class:`~divak.metrics.ApplicationMetrics` adds these instruments to every
application's provider (``settings['runtime_metrics']``, default on) and
starts the probe on the application's IOLoop.

Memory and descriptor counts are read from ``/proc/self`` (Linux); where
it does not exist those instruments report nothing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
import typing

from opentelemetry import metrics as otel_metrics
from tornado import ioloop

__all__ = ["IOLOOP_LAG", "LAG_BUCKETS", "IOLoopLag", "RuntimeMetrics"]

IOLOOP_LAG = "divak.ioloop.lag"

#: Buckets of ``divak.ioloop.lag``, in seconds: from 1 ms to 10 s.
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
LAG_BUCKETS += (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # divak runs on POSIX systems only
Observations = typing.Iterator[otel_metrics.Observation]


def _statm() -> tuple[int, int] | None:
    """``(virtual, resident)`` bytes of this process, or :data:`None`."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            size, resident = statm.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(size) * _PAGE_SIZE, int(resident) * _PAGE_SIZE


def _threads() -> int | None:
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class IOLoopLag:
    """Measures how late the IOLoop runs a callback scheduled for a given time.

    :param histogram: where each lateness (seconds) is recorded
    :param interval: seconds between probes
    """

    def __init__(
        self, histogram: otel_metrics.Histogram, interval: float = 0.5
    ) -> None:
        self.histogram = histogram
        self.interval = interval
        self._loop: ioloop.IOLoop | None = None
        self._handle: object | None = None
        self._due = 0.0

    def start(self, io_loop: ioloop.IOLoop) -> None:
        """Start probing *io_loop*; call it on the IOLoop's thread."""
        if self._loop is not None:
            return
        self._loop = io_loop
        self._schedule()

    def stop(self) -> None:
        """Stop probing (safe from any thread, and more than once)."""
        loop, handle, self._loop, self._handle = self._loop, self._handle, None, None
        if loop is not None and handle is not None:
            loop.add_callback(loop.remove_timeout, handle)

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._probe)

    def _probe(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self.histogram.record(max(0.0, loop.time() - self._due))
        self._schedule()


class RuntimeMetrics:
    """The process and runtime instruments of one meter (see the module).

    :param meter: the application's OpenTelemetry ``Meter``
    :param lag_interval: seconds between IOLoop lag probes
    """

    def __init__(self, meter: otel_metrics.Meter, lag_interval: float = 0.5) -> None:
        meter.create_observable_counter(
            "process.cpu.time", [self._cpu_time], "s", "Total CPU seconds by mode."
        )
        meter.create_observable_up_down_counter(
            "process.memory.usage",
            [self._resident],
            "By",
            "The amount of physical memory in use.",
        )
        meter.create_observable_up_down_counter(
            "process.memory.virtual",
            [self._virtual],
            "By",
            "The amount of committed virtual memory.",
        )
        meter.create_observable_up_down_counter(
            "process.unix.file_descriptor.count",
            [self._descriptors],
            "{file_descriptor}",
            "Number of unix file descriptors in use by the process.",
        )
        meter.create_observable_up_down_counter(
            "process.thread.count",
            [self._thread_count],
            "{thread}",
            "Process threads count.",
        )
        for name, field, unit, description in (
            (
                "cpython.gc.collections",
                "collections",
                "{collection}",
                "The number of times a generation was collected since start.",
            ),
            (
                "cpython.gc.collected_objects",
                "collected",
                "{object}",
                "The total number of objects collected since start.",
            ),
            (
                "cpython.gc.uncollectable_objects",
                "uncollectable",
                "{object}",
                "The total number of objects found uncollectable since start.",
            ),
        ):
            meter.create_observable_counter(
                name, [self._gc_observer(field)], unit, description
            )
        self.lag = IOLoopLag(
            meter.create_histogram(
                IOLOOP_LAG,
                "s",
                "How late the IOLoop ran callbacks scheduled for a given time.",
                explicit_bucket_boundaries_advisory=LAG_BUCKETS,
            ),
            lag_interval,
        )

    def start(self, io_loop: ioloop.IOLoop | None = None) -> None:
        """Start the IOLoop lag probe on *io_loop* (default: the running one).

        Without a running event loop (and no *io_loop*), the lag is not
        measured; the other instruments are.
        """
        if io_loop is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            io_loop = ioloop.IOLoop.current()
        self.lag.start(io_loop)

    def stop(self) -> None:
        """Stop the IOLoop lag probe."""
        self.lag.stop()

    @staticmethod
    def _cpu_time(options: otel_metrics.CallbackOptions) -> Observations:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield otel_metrics.Observation(usage.ru_utime, {"cpu.mode": "user"})
        yield otel_metrics.Observation(usage.ru_stime, {"cpu.mode": "system"})

    @staticmethod
    def _resident(options: otel_metrics.CallbackOptions) -> Observations:
        statm = _statm()
        if statm is not None:
            yield otel_metrics.Observation(statm[1])

    @staticmethod
    def _virtual(options: otel_metrics.CallbackOptions) -> Observations:
        statm = _statm()
        if statm is not None:
            yield otel_metrics.Observation(statm[0])

    @staticmethod
    def _descriptors(options: otel_metrics.CallbackOptions) -> Observations:
        try:
            count = len(os.listdir("/proc/self/fd"))
        except OSError:
            return
        yield otel_metrics.Observation(count)

    @staticmethod
    def _thread_count(options: otel_metrics.CallbackOptions) -> Observations:
        count = _threads()
        yield otel_metrics.Observation(
            count if count is not None else threading.active_count()
        )

    @staticmethod
    def _gc_observer(
        field: str,
    ) -> typing.Callable[[otel_metrics.CallbackOptions], Observations]:
        def observe(options: otel_metrics.CallbackOptions) -> Observations:
            for generation, stats in enumerate(gc.get_stats()):
                yield otel_metrics.Observation(
                    stats[field], {"cpython.gc.generation": generation}
                )

        return observe
