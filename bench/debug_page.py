"""What the debug page costs a request: a micro-benchmark of ``RequestStats.record``.

Run from the project root::

    python3 bench/debug_page.py                  # 5 rounds of 200,000 requests
    python3 bench/debug_page.py --requests 1000000 --rounds 7

Each round feeds the same pre-computed requests (10 routes, durations from
0.5 ms to 2 s, 1 % failures with a trace id, a few slow ones) through
:meth:`divak.debug.RequestStats.record` with the real clock, as the request
pipeline does once per finished request, and reports the median time per
call over the rounds.  "page off" is what the pipeline pays when the page
is off: a test that its statistics are ``None``.  "snapshot" is one view of
the page (the JSON data) with those routes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import typing

from divak.debug import RequestStats, page_data

ROUTES = [f"/api/v1/resource{index}/{{item_id}}" for index in range(10)]


def requests(count: int) -> list[tuple[typing.Any, ...]]:
    """*count* requests: route, method, status, seconds, trace id, error, path."""
    chooser = random.Random(22)
    made = []
    for index in range(count):
        route = ROUTES[index % len(ROUTES)]
        seconds = min(chooser.lognormvariate(-4.5, 1.0), 2.0)
        failed = chooser.random() < 0.01
        made.append(
            (
                route,
                "GET" if index % 4 else "POST",
                500 if failed else 200,
                seconds,
                f"{chooser.getrandbits(128):032x}",
                failed,
                route.replace("{item_id}", str(index)),
            )
        )
    return made


def per_call(function: typing.Callable[[], None], calls: int) -> float:
    """Seconds per call of *function*, which makes *calls* calls."""
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    inputs = requests(options.requests)
    stats = RequestStats(slow=1.0)

    def on() -> None:
        record = stats.record
        for route, method, status, seconds, trace_id, error, path in inputs:
            record(route, method, status, seconds, trace_id, error, path)

    off_stats: RequestStats | None = None

    def off() -> None:
        for route, method, status, seconds, trace_id, error, path in inputs:
            if off_stats is not None:
                off_stats.record(route, method, status, seconds, trace_id, error, path)

    def loop() -> None:
        for _route, _method, _status, _seconds, _trace_id, _error, _path in inputs:
            pass

    results: dict[str, list[float]] = {"on": [], "off": [], "snapshot": []}
    for _ in range(options.rounds):
        empty = per_call(loop, len(inputs))
        results["on"].append(per_call(on, len(inputs)) - empty)
        results["off"].append(per_call(off, len(inputs)) - empty)
        results["snapshot"].append(per_call(lambda: page_data(stats), 1))
    on_us = statistics.median(results["on"]) * 1e6
    off_us = statistics.median(results["off"]) * 1e6
    snapshot_ms = statistics.median(results["snapshot"]) * 1e3
    print(f"{options.rounds} rounds of {len(inputs)} requests, {len(ROUTES)} routes")
    print(f"record(), page on   {on_us:6.2f} µs per request")
    print(f"page off            {off_us:6.3f} µs per request")
    print(f"one view (JSON data) {snapshot_ms:5.1f} ms")


if __name__ == "__main__":
    main()
