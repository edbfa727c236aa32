"""The metrics thread: where scrapes do their work, beside the IOLoop.

Collecting, summing and encoding a registry of a few thousand series costs
a few hundred milliseconds of CPU.  On the IOLoop that stalls every other
request for as long, so :class:`MetricsThread` runs it on a thread of its
own.  A thread alone is not enough in CPython: while the IOLoop's thread
waits in a system call (``epoll``, ``send``...) a busy thread takes the
GIL and keeps it for the whole switch interval (5 ms) before it is made
to give it back, so a request that makes ten system calls waits some
50 ms (the "convoy effect").  So the work on the metrics thread walks its
points and samples through :func:`paced`, which gives the GIL back for a
moment every couple of milliseconds of work: the IOLoop's thread takes it
at once instead of after the switch interval.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import typing

from tornado import ioloop

__all__ = ["PACE_INTERVAL", "MetricsThread", "paced"]

_T = typing.TypeVar("_T")

#: Seconds of work on the metrics thread between two pauses of :func:`paced`.
PACE_INTERVAL = 0.002
#: Seconds :func:`paced` sleeps, long enough for a waiting thread to wake
#: up and take the GIL.
_PAUSE = 0.0001
#: Items between two looks at the clock.
_STRIDE = 64


def paced(items: typing.Iterable[_T]) -> typing.Iterator[_T]:
    """*items*, with a short sleep every :data:`PACE_INTERVAL` seconds.

    The sleep releases the GIL, so another thread that waits for it (the
    IOLoop's) gets it within about :data:`PACE_INTERVAL` instead of the
    interpreter's switch interval.  Costs about 5 % of the loop's time;
    on the IOLoop's own thread it only slows the loop down a little.

    :param items: any iterable
    """
    last = time.perf_counter()
    for count, item in enumerate(items, 1):
        yield item
        if count % _STRIDE == 0:
            now = time.perf_counter()
            if now - last >= PACE_INTERVAL:
                time.sleep(_PAUSE)
                last = time.perf_counter()


class MetricsThread:
    """One thread that runs an application's metrics work off the IOLoop.

    Created idle; the thread starts on the first :meth:`run`, and
    :meth:`stop` lets it end.  One thread, so concurrent scrapes wait for
    each other instead of multiplying the work.
    """

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def run(
        self, function: typing.Callable[..., _T], *args: typing.Any
    ) -> asyncio.Future[_T]:
        """Run ``function(*args)`` on the thread.

        Call it on the IOLoop's thread.

        :returns: a future of the result (or of the exception *function*
            raised), resolved on the current IOLoop
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="divak-metrics"
            )
        return ioloop.IOLoop.current().run_in_executor(executor, function, *args)

    def stop(self) -> None:
        """Let the thread end once its work is done; a later :meth:`run` starts
        a new one."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
