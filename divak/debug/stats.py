"""Request statistics for the debug page: rate, errors and latency per route.

:class:`RequestStats` is told of every finished request once, by
:meth:`RequestStats.record`, and answers per route, over the last 1, 5
and 15 minutes: requests per second, the share of failed requests and the
50th, 90th and 99th latency percentiles; plus the last 50 failed and the
last 50 slow requests (:meth:`RequestStats.snapshot`).

.. rubric:: Time slots

Each route (method and route template, as the SERVER span's name) has two
bounded rings of slots: the last 60 seconds in 1-second slots and the last
15 minutes in 10-second slots.  A request adds to the current slot of
each ring; a slot is allocated the first time its route has a request in
it and reused when the ring comes round again, so memory grows with the
routes in use, never with traffic (at most about 150 kB for a route
that had requests in every second of the last 15 minutes).  A
window is made of the slots that started within it, the current one
included: the last minute covers between 59 and 60 seconds, 5 minutes
between 290 and 300 s, 15 minutes between 890 and 900 s; rates divide by
the time actually covered (or by the time since the statistics began,
when shorter).

.. rubric:: Latency buckets and precision

Durations are counted in fixed buckets whose bounds grow by a factor of
2\\ :sup:`1/4` (19 %) from 100 µs to 104.9 s (:data:`BUCKET_BOUNDS`), plus
one below and one above.  A percentile is the nearest-rank percentile of
the counts: the geometric middle of the bucket it falls in, kept between
the shortest and the longest duration seen in the window.  Between 100 µs
and 104.9 s the value shown is within a factor of 2\\ :sup:`±1/8` of the
true percentile (at most 9.1 % off); when all durations of a window are
equal it is exact.
Outside that range the shortest or longest duration is shown.

.. rubric:: Cost

:meth:`RequestStats.record` looks its route up in a dictionary and adds
to one slot of each ring: about 2 µs (``bench/debug_page.py`` measures
it).  The statistics are not thread-safe: record and read them on the
IOLoop's thread.
"""

from __future__ import annotations

import bisect
import collections
import math
import operator
import time
import typing

from divak import semconv

__all__ = [
    "BUCKET_BOUNDS",
    "MAX_RECENT",
    "MAX_ROUTES",
    "PERCENTILES",
    "WINDOWS",
    "RequestStats",
    "percentile",
]

#: Upper bounds (seconds) of the latency buckets: 100 µs × 2\ :sup:`k/4`,
#: k = 0 … 80.  One more bucket holds the longer durations.
BUCKET_BOUNDS: tuple[float, ...] = tuple(1e-4 * 2 ** (k / 4) for k in range(81))
#: The windows: name and length in seconds.
WINDOWS: tuple[tuple[str, int], ...] = (("1m", 60), ("5m", 300), ("15m", 900))
#: The percentiles shown, in percent.
PERCENTILES: tuple[int, ...] = (50, 90, 99)
#: Failed and slow requests kept, each.
MAX_RECENT = 50
#: Routes kept apart; requests of more routes are counted together under
#: the name ``"(other routes)"``.
MAX_ROUTES = 100
#: Characters kept of a request's path.
MAX_PATH_LENGTH = 256

OTHER_ROUTES = "(other routes)"

# A slot: [tick, requests, failed, shortest, longest, bucket counts...].
_TICK, _COUNT, _FAILED, _LOW, _HIGH, _FIRST_BUCKET = range(6)
_EMPTY_SLOT: list[typing.Any] = [-1, 0, 0, math.inf, 0.0] + [0] * (
    len(BUCKET_BOUNDS) + 1
)
# The value a percentile takes in each bucket, before clamping to the
# window's shortest and longest durations.
_MIDDLES: tuple[float, ...] = (
    BUCKET_BOUNDS[0],
    *(math.sqrt(a * b) for a, b in zip(BUCKET_BOUNDS, BUCKET_BOUNDS[1:], strict=False)),
    math.inf,
)
_SECOND_SLOTS = 60
_TEN_SECOND_SLOTS = 90
_CHART_STEP = 10

Window = dict[str, typing.Any]
Entry = dict[str, typing.Any]


class _Route:
    """The two rings of one route."""

    __slots__ = ("name", "method", "route", "seconds", "tens")

    def __init__(self, name: str, method: str | None, route: str | None) -> None:
        self.name = name
        self.method = method
        self.route = route
        self.seconds: list[list[typing.Any] | None] = [None] * _SECOND_SLOTS
        self.tens: list[list[typing.Any] | None] = [None] * _TEN_SECOND_SLOTS


class _Totals:
    """Slots added together: counts, extremes and bucket counts."""

    __slots__ = ("count", "failed", "low", "high", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0
        self.low = math.inf
        self.high = 0.0
        self.buckets: list[int] = [0] * (len(BUCKET_BOUNDS) + 1)

    def add(self, slot: list[typing.Any]) -> None:
        self.count += slot[_COUNT]
        self.failed += slot[_FAILED]
        self.low = min(self.low, slot[_LOW])
        self.high = max(self.high, slot[_HIGH])
        self.buckets = list(map(operator.add, self.buckets, slot[_FIRST_BUCKET:]))

    def window(self, covered: float) -> Window:
        count = self.count
        window: Window = {
            "requests": count,
            "rate": count / max(covered, 1.0),
            "errors": self.failed,
            "error_rate": self.failed / count if count else None,
        }
        for percent in PERCENTILES:
            window[f"p{percent}"] = percentile(
                self.buckets, count, percent, self.low, self.high
            )
        return window


def percentile(
    buckets: typing.Sequence[int], count: int, percent: int, low: float, high: float
) -> float | None:
    """The nearest-rank *percent* percentile of bucket counts, in seconds.

    :param buckets: a count per latency bucket (:data:`BUCKET_BOUNDS`,
        then the overflow bucket)
    :param count: the sum of *buckets*
    :param percent: 1 to 100
    :param low: the shortest duration counted (seconds)
    :param high: the longest duration counted (seconds)
    :returns: the bucket's geometric middle kept within [*low*, *high*],
        or :data:`None` when *count* is 0
    """
    if count <= 0:
        return None
    rank = max(1, -(-percent * count // 100))
    seen = 0
    for index, number in enumerate(buckets):
        seen += number
        if seen >= rank:
            return min(max(_MIDDLES[index], low), high)
    return high


class RequestStats:
    """Per-route request rate, failures and latency, and recent failures.

    Call :meth:`record` once per finished request (from the IOLoop's
    thread); read everything with :meth:`snapshot`.  See the module's
    documentation for the slots, the buckets and the precision.

    :param slow: a request that took at least this many seconds is a slow
        request; :data:`None` keeps no slow requests
    :param clock: the monotonic clock, in seconds
        (default :func:`time.monotonic`)
    :param wall_clock: the time of day of failed and slow requests,
        seconds since the epoch (default :func:`time.time`)
    """

    def __init__(
        self,
        slow: float | None = 1.0,
        clock: typing.Callable[[], float] = time.monotonic,
        wall_clock: typing.Callable[[], float] = time.time,
    ) -> None:
        self._threshold = math.inf if slow is None else float(slow)
        self._clock = clock
        self._wall_clock = wall_clock
        self._started = clock()
        self._routes: dict[tuple[str | None, str | None], _Route] = {}
        self._failures: collections.deque[Entry] = collections.deque(
            maxlen=MAX_RECENT
        )
        self._slow_requests: collections.deque[Entry] = collections.deque(
            maxlen=MAX_RECENT
        )

    @property
    def slow_threshold(self) -> float | None:
        """Seconds from which a request counts as slow; :data:`None` for never."""
        threshold = self._threshold
        return None if threshold == math.inf else threshold

    def record(
        self,
        route: str | None,
        method: str,
        status: int | None,
        seconds: float,
        trace_id: str | None = None,
        error: bool = False,
        path: str | None = None,
    ) -> None:
        """Count one finished request.

        A request *fails* when *error* is true, when its status is 500 or
        more, or when no response was sent (*status* :data:`None`).

        :param route: the route template (``/items/{item_id}``), never the
            raw path; :data:`None` when no route matched
        :param method: the request's method (``GET``)
        :param status: the response's status code; :data:`None` when the
            client went away before a response was sent
        :param seconds: how long the request took, in seconds
        :param trace_id: the trace id (32 hex digits), shown with failed
            and slow requests; :data:`None` outside a trace
        :param error: :data:`True` when the request ended with an
            unhandled exception (or the client went away)
        :param path: the request's path without its query, shown with
            failed and slow requests
        """
        routes = self._routes.get((method, route))
        if routes is None:
            routes = self._route(method, route)
        second = int(self._clock())
        failed = error or status is None or status >= 500
        bucket = bisect.bisect_left(BUCKET_BOUNDS, seconds) + _FIRST_BUCKET

        slot = routes.seconds[second % _SECOND_SLOTS]
        if slot is None or slot[_TICK] != second:
            slot = _reset(routes.seconds, second % _SECOND_SLOTS, second)
        slot[_COUNT] += 1
        if failed:
            slot[_FAILED] += 1
        if seconds < slot[_LOW]:
            slot[_LOW] = seconds
        if seconds > slot[_HIGH]:
            slot[_HIGH] = seconds
        slot[bucket] += 1

        tick = second // _CHART_STEP
        slot = routes.tens[tick % _TEN_SECOND_SLOTS]
        if slot is None or slot[_TICK] != tick:
            slot = _reset(routes.tens, tick % _TEN_SECOND_SLOTS, tick)
        slot[_COUNT] += 1
        if failed:
            slot[_FAILED] += 1
        if seconds < slot[_LOW]:
            slot[_LOW] = seconds
        if seconds > slot[_HIGH]:
            slot[_HIGH] = seconds
        slot[bucket] += 1

        if failed or seconds >= self._threshold:
            entry: Entry = {
                "time": self._wall_clock(),
                "name": routes.name,
                "method": method,
                "route": route,
                "path": path[:MAX_PATH_LENGTH] if path is not None else None,
                "status": status,
                "duration": seconds,
                "trace_id": trace_id,
                "error": failed,
            }
            if failed:
                self._failures.append(entry)
            if seconds >= self._threshold:
                self._slow_requests.append(entry)

    def _route(self, method: str, route: str | None) -> _Route:
        """The route of a request seen for the first time (slow path)."""
        known = method if method in semconv.KNOWN_METHODS else "_OTHER"
        key: tuple[str | None, str | None] = (known, route)
        routes = self._routes.get(key)
        if routes is not None:
            return routes
        if len(self._routes) >= MAX_ROUTES:
            key = (None, None)
            routes = self._routes.get(key)
            if routes is not None:
                return routes
            routes = _Route(OTHER_ROUTES, None, None)
        else:
            routes = _Route(semconv.span_name(known, route), known, route)
        self._routes[key] = routes
        return routes

    def snapshot(self) -> dict[str, typing.Any]:
        """Everything the debug page shows of the requests, JSON-ready.

        :returns: a dictionary with

            * ``routes``: per route, sorted by name: ``name`` (the SERVER
              span's name, ``GET /items/{item_id}``), ``method``,
              ``route`` (:data:`None` for requests no route matched),
              ``windows`` (``"1m"``, ``"5m"``, ``"15m"``, each with
              ``requests``, ``rate`` (per second), ``errors``,
              ``error_rate`` (0 to 1, :data:`None` without requests),
              ``p50``, ``p90``, ``p99`` (seconds, :data:`None` without
              requests)), and ``chart``: ``step`` (10 seconds) and the
              lists ``requests``, ``p50`` and ``p99`` of the last 90
              10-second slots, oldest first, the current one last
              (:data:`None` where a slot had no request); routes without
              a request in the last 15 minutes are left out;
            * ``errors`` and ``slow``: the last failed and slow requests,
              newest first, each with ``time`` (seconds since the epoch),
              ``name``, ``method``, ``route``, ``path``, ``status``,
              ``duration`` (seconds), ``trace_id`` and ``error``;
            * ``slow_threshold``: seconds, or :data:`None`.
        """
        now = self._clock()
        second = int(now)
        tick = second // _CHART_STEP
        since_start = now - self._started
        rows = []
        for routes in sorted(self._routes.values(), key=operator.attrgetter("name")):
            windows: dict[str, Window] = {}
            minute = _Totals()
            for slot in routes.seconds:
                if slot is not None and slot[_TICK] > second - _SECOND_SLOTS:
                    minute.add(slot)
            covered = now - (second - _SECOND_SLOTS + 1)
            windows["1m"] = minute.window(min(covered, since_start))
            longer = _Totals()
            chart: dict[str, typing.Any] = {
                "step": _CHART_STEP,
                "requests": [],
                "p50": [],
                "p99": [],
            }
            for age in range(_TEN_SECOND_SLOTS):
                slot = routes.tens[(tick - age) % _TEN_SECOND_SLOTS]
                if slot is None or slot[_TICK] != tick - age:
                    slot = None
                else:
                    longer.add(slot)
                _chart_point(chart, slot)
                if age + 1 in (30, 90):
                    covered = now - (tick - age) * _CHART_STEP
                    name = "5m" if age + 1 == 30 else "15m"
                    windows[name] = longer.window(min(covered, since_start))
            if not longer.count:
                continue
            for values in ("requests", "p50", "p99"):
                chart[values].reverse()
            rows.append(
                {
                    "name": routes.name,
                    "method": routes.method,
                    "route": routes.route,
                    "windows": windows,
                    "chart": chart,
                }
            )
        return {
            "routes": rows,
            "errors": [dict(entry) for entry in reversed(self._failures)],
            "slow": [dict(entry) for entry in reversed(self._slow_requests)],
            "slow_threshold": self.slow_threshold,
        }


def _reset(
    ring: list[list[typing.Any] | None], index: int, tick: int
) -> list[typing.Any]:
    """Make the slot at *index* of *ring* an empty slot for *tick*."""
    slot = ring[index]
    if slot is None:
        slot = ring[index] = list(_EMPTY_SLOT)
    else:
        slot[:] = _EMPTY_SLOT
    slot[_TICK] = tick
    return slot


def _chart_point(chart: dict[str, typing.Any], slot: list[typing.Any] | None) -> None:
    if slot is None:
        chart["requests"].append(0)
        chart["p50"].append(None)
        chart["p99"].append(None)
        return
    count = slot[_COUNT]
    buckets = slot[_FIRST_BUCKET:]
    chart["requests"].append(count)
    for percent in (50, 99):
        chart[f"p{percent}"].append(
            percentile(buckets, count, percent, slot[_LOW], slot[_HIGH])
        )
