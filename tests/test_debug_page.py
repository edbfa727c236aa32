"""The live debug page over real sockets, and in a real headless browser.

Until the request pipeline feeds the page's statistics itself, the test
application does what the pipeline will: it calls
:meth:`divak.debug.RequestStats.record` once per finished request, after
the access line (``log_request``), with the request's route, status,
duration, trace id and whether an exception ended it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import math
import os
import pathlib
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import typing

import pytest
from tornado import httpclient, httpserver, netutil, web, websocket

import divak
from divak import debug
from divak.context import request_context_of
from divak.debug import stats as debug_stats
from tests.conftest import ROOT, run
from tests.test_layers import graph

TRACE_URL = "http://zipkin:9411/zipkin/traces/{trace_id}"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HOSTILE = "<script>document.title='pwned'</script>"


# -- a service that feeds its page ------------------------------------------
class Item(web.RequestHandler):
    def get(self, item_id: str) -> None:
        self.write({"item": item_id})


class Fail(web.RequestHandler):
    def get(self, *args: str) -> None:
        raise RuntimeError("the handler failed")


class Slow(web.RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(0.06)
        self.write("slow")


class Service(divak.Recorder, divak.Application):
    """Serves its debug page at /divak and is the page's :class:`DebugSource`."""

    def __init__(
        self, stats: debug.RequestStats | None = None, **settings: typing.Any
    ) -> None:
        super().__init__(
            [
                (r"/items/(?P<item_id>[^/]+)", Item),
                (r"/fail", Fail),
                (r"/slow", Slow),
                (r"/evil/" + re.escape(HOSTILE) + r"/(.*)", Fail),
            ],
            **settings,
        )
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_reporter(divak.LoggingReporter())
        self.started = time.monotonic()
        self.in_flight = 0
        self.stats = debug.install(self, "/divak", stats, source=self)

    # -- what the request pipeline will do ---------------------------------
    def get_handler_delegate(
        self, request: typing.Any, *args: typing.Any, **kwargs: typing.Any
    ) -> typing.Any:
        self.in_flight += 1
        return super().get_handler_delegate(request, *args, **kwargs)

    def log_request(self, handler: web.RequestHandler) -> None:
        super().log_request(handler)
        self.in_flight -= 1
        request = handler.request
        context = request_context_of(request)
        assert context is not None
        self.stats.record(
            context.route,
            request.method or "GET",
            handler.get_status(),
            request.request_time(),
            context.trace_id_hex,
            context.exception_type is not None,
            request.path,
        )

    # -- DebugSource -------------------------------------------------------
    @property
    def divak_queued_spans(self) -> int:
        return sum(queue.pending_spans for queue in self.divak_span_queues)

    @property
    def divak_requests_in_flight(self) -> int:
        return self.in_flight

    @property
    def divak_websocket_connections(self) -> int:
        return 0

    @property
    def divak_uptime(self) -> float:
        return time.monotonic() - self.started


_SERVERS: list[tuple[httpserver.HTTPServer, typing.Any]] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> typing.Iterator[None]:
    yield
    while _SERVERS:
        server, app = _SERVERS.pop()
        server.stop()
        app.divak_shutdown()


def serve(app: typing.Any, address: str = "127.0.0.1", xheaders: bool = False) -> int:
    """Serve *app* on a free port of *address* in the running loop."""
    sockets = netutil.bind_sockets(0, address)
    server = httpserver.HTTPServer(app, xheaders=xheaders)
    server.add_sockets(sockets)
    _SERVERS.append((server, app))
    return sockets[0].getsockname()[1]


async def fetch(
    url: str, headers: dict[str, str] | None = None
) -> httpclient.HTTPResponse:
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url, headers=headers, raise_error=False)
    finally:
        client.close()


async def exercise(port: int) -> None:
    """Requests of every kind: three items, a failure with a known trace id,
    a slow one and one no route matches."""
    base = f"http://127.0.0.1:{port}"
    for item in ("1", "2", "3"):
        assert (await fetch(f"{base}/items/{item}")).code == 200
    traceparent = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
    assert (await fetch(f"{base}/fail", traceparent)).code == 500
    assert (await fetch(f"{base}/slow")).code == 200
    assert (await fetch(f"{base}/nowhere")).code == 404


def by_name(data: dict[str, typing.Any]) -> dict[str, dict[str, typing.Any]]:
    return {row["name"]: row for row in data["routes"]}


# -- the page over real sockets ----------------------------------------------
def test_a_loopback_client_sees_the_routes_it_exercised() -> None:
    async def main() -> None:
        app = Service(divak_trace_url=TRACE_URL, divak_debug_page_slow=0.05)
        port = serve(app)
        await exercise(port)
        response = await fetch(f"http://127.0.0.1:{port}/divak")
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
        page = response.body.decode()
        for name in ("GET /items/{item_id}", "GET /fail", "GET /slow"):
            assert f">{name}" in page
        assert '<meta http-equiv="refresh" content="5">' in page
        assert page.count("<svg") == 4  # one chart per route, the 404 included
        link = TRACE_URL.replace("{trace_id}", TRACE_ID)
        assert f'<a href="{link}">{TRACE_ID}</a>' in page
        assert "Requests in flight" in page and "serving" in page
        assert "<script" not in page
        # No external asset: the only URLs are the JSON view, the empty icon
        # and the trace links.
        urls = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert "data:," in urls and "?format=json" in urls
        assert {url for url in urls if url not in ("data:,", "?format=json")} == {
            TRACE_URL.replace("{trace_id}", trace_id)
            for trace_id in re.findall(r"traces/([0-9a-f]{32})", page)
        }
        assert "src=" not in page

    run(main())


def test_json_format_returns_the_same_data() -> None:
    async def main() -> None:
        app = Service(divak_trace_url=TRACE_URL, divak_debug_page_slow=0.05)
        port = serve(app)
        await exercise(port)
        response = await fetch(f"http://127.0.0.1:{port}/divak?format=json")
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        data = json.loads(response.body)
        assert data["windows"] == {"1m": 60, "5m": 300, "15m": 900}
        routes = by_name(data)
        assert set(routes) == {
            "GET /items/{item_id}",
            "GET /fail",
            "GET /slow",
            "GET",  # no route matched
        }
        assert routes["GET"]["route"] is None
        items = routes["GET /items/{item_id}"]
        assert items["method"] == "GET" and items["route"] == "/items/{item_id}"
        for name in ("1m", "5m", "15m"):
            window = items["windows"][name]
            assert window["requests"] == 3 and window["errors"] == 0
            assert window["error_rate"] == 0.0 and window["rate"] > 0
            assert 0 < window["p50"] <= window["p90"] <= window["p99"] < 5
        assert routes["GET /fail"]["windows"]["1m"]["error_rate"] == 1.0
        assert routes["GET"]["windows"]["1m"]["errors"] == 0  # 404 is no failure
        assert routes["GET /slow"]["windows"]["15m"]["p50"] >= 0.05
        chart = items["chart"]
        assert chart["step"] == 10 and len(chart["p99"]) == 90
        assert chart["requests"][-1] + chart["requests"][-2] == 3
        [failure] = data["errors"]
        assert failure["name"] == "GET /fail" and failure["status"] == 500
        assert failure["trace_id"] == TRACE_ID and failure["path"] == "/fail"
        assert failure["trace_url"] == TRACE_URL.replace("{trace_id}", TRACE_ID)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failure["time"])
        assert [entry["name"] for entry in data["slow"]] == ["GET /slow"]
        assert data["slow_threshold"] == 0.05
        service = data["service"]
        assert service["requests_in_flight"] == 1  # this request
        assert service["draining"] is False and service["dropped_spans"] == 0
        assert service["websocket_connections"] == 0 and service["uptime"] > 0
        assert service["queued_spans"] >= 0
        app.draining = True
        response = await fetch(f"http://127.0.0.1:{port}/divak?format=json")
        assert json.loads(response.body)["service"]["draining"] is True

    run(main())


def test_a_client_that_is_not_loopback_gets_404() -> None:
    async def main() -> None:
        app = Service()
        port = serve(app, xheaders=True)
        url = f"http://127.0.0.1:{port}/divak"
        remote = {"X-Real-Ip": "203.0.113.9"}
        assert (await fetch(url)).code == 200
        for path in ("/divak", "/divak?format=json"):
            response = await fetch(f"http://127.0.0.1:{port}{path}", remote)
            assert response.code == 404
            assert b"/items" not in response.body

    run(main())


def test_the_allow_list_opens_the_page_to_its_networks() -> None:
    async def main() -> None:
        app = Service(divak_debug_page_allow="198.51.100.0/24, 203.0.113.9")
        port = serve(app, xheaders=True)
        url = f"http://127.0.0.1:{port}/divak"
        assert (await fetch(url, {"X-Real-Ip": "203.0.113.9"})).code == 200
        assert (await fetch(url, {"X-Real-Ip": "198.51.100.200"})).code == 200
        assert (await fetch(url, {"X-Real-Ip": "203.0.113.10"})).code == 404

    run(main())


def non_loopback_address() -> str | None:
    """An address of this machine that is not a loopback one, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: nothing is sent
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_forged_loopback_header_from_a_remote_peer_gets_404() -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address besides the loopback ones")

    async def main() -> None:
        for xheaders in (True, False):
            port = serve(Service(), address, xheaders=xheaders)
            url = f"http://{address}:{port}/divak"
            assert (await fetch(url, {"X-Real-Ip": "127.0.0.1"})).code == 404
            assert (await fetch(url)).code == 404
        allowed = Service(divak_debug_page_allow=address)
        port = serve(allowed, address)
        assert (await fetch(f"http://{address}:{port}/divak")).code == 200

    run(main())


def test_hostile_routes_and_paths_are_escaped() -> None:
    async def main() -> None:
        app = Service(divak_trace_url=TRACE_URL)
        port = serve(app)
        path = "/evil/" + HOSTILE + '/"><img/src=x/onerror=alert(1)>'
        response = await fetch(f"http://127.0.0.1:{port}{path}")
        assert response.code == 500
        data = json.loads((await fetch(f"http://127.0.0.1:{port}/divak?format=json")).body)
        [failure] = data["errors"]
        assert HOSTILE in failure["name"] and failure["path"] == path
        page = (await fetch(f"http://127.0.0.1:{port}/divak")).body.decode()
        assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
        assert "&quot;&gt;&lt;img/src=x/onerror=alert(1)&gt;" in page
        assert "<script" not in page and "<img" not in page

    run(main())


def test_set_divak_debug_page_serves_the_page_at_its_path() -> None:
    async def main() -> None:
        app = divak_app()
        assert app.divak_debug_stats is None
        app.set_divak_debug_page("/_debug")
        stats = app.divak_debug_stats
        assert isinstance(stats, debug.RequestStats)
        with pytest.raises(RuntimeError):
            app.set_divak_debug_page("/other")
        port = serve(app)
        # Fed by the request pipeline itself: no handler code records.
        for item in ("1", "2"):
            assert (await fetch(f"http://127.0.0.1:{port}/items/{item}")).code == 200
        response = await fetch(f"http://127.0.0.1:{port}/_debug")
        assert response.code == 200
        page = response.body.decode()
        assert ">GET /items/{item_id}" in page
        assert "Requests in flight" in page and "serving" in page
        data = json.loads(
            (await fetch(f"http://127.0.0.1:{port}/_debug?format=json")).body
        )
        [row] = [r for r in data["routes"] if r["name"] == "GET /items/{item_id}"]
        assert row["windows"]["1m"]["requests"] == 2
        service = data["service"]
        assert service["draining"] is False and service["uptime"] > 0
        assert service["requests_in_flight"] == 1  # this very request
        assert service["dropped_spans"] == 0

    run(main())


def divak_app(**settings: typing.Any) -> typing.Any:
    class Application(divak.Recorder, divak.Application):
        pass

    app = Application([(r"/items/(?P<item_id>[^/]+)", Item)], **settings)
    app.add_divak_reporter(divak.LoggingReporter())
    return app


def test_the_page_is_off_by_default_and_follows_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DIVAK_DEBUG_PAGE", raising=False)

    async def main() -> None:
        off = divak_app()
        off.set_divak_debug_page()
        assert off.divak_debug_stats is None
        port = serve(off)
        assert (await fetch(f"http://127.0.0.1:{port}/divak")).code == 404

        monkeypatch.setenv("DIVAK_DEBUG_PAGE", "/divak")
        on = divak_app()
        on.set_divak_debug_page()
        assert on.divak_debug_stats is not None
        port = serve(on)
        assert (await fetch(f"http://127.0.0.1:{port}/divak")).code == 200

        monkeypatch.setenv("DIVAK_DEBUG_PAGE", "off")
        assert debug.page_path({}) is None
        setting = divak_app(divak_debug_page="/from-settings")
        setting.set_divak_debug_page()
        port = serve(setting)
        assert (await fetch(f"http://127.0.0.1:{port}/from-settings")).code == 200

    run(main())


def test_invalid_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIVAK_DEBUG_PAGE", "divak")
    with pytest.raises(ValueError, match="DIVAK_DEBUG_PAGE must be a path"):
        debug.page_path({})
    with pytest.raises(ValueError, match=r"settings\['divak_debug_page'\]"):
        debug.page_path({"divak_debug_page": "true"})
    with pytest.raises(ValueError, match="divak_debug_page_allow"):
        debug.page_options({"divak_debug_page_allow": ["10.0.0.0/8", "nope"]})
    with pytest.raises(ValueError, match="must contain {trace_id}"):
        debug.page_options({"divak_trace_url": "http://zipkin:9411/"})
    with pytest.raises(ValueError, match="DIVAK_DEBUG_PAGE must be a path"):
        divak_app()  # an application fails at once, not at its first view
    monkeypatch.delenv("DIVAK_DEBUG_PAGE")
    monkeypatch.setenv("DIVAK_DEBUG_PAGE_SLOW", "-1")
    with pytest.raises(ValueError, match="DIVAK_DEBUG_PAGE_SLOW"):
        debug.install(divak_app(), "/divak")
    with pytest.raises(ValueError, match="must start with '/'"):
        debug.install(divak_app(), "divak")


# -- the statistics on known inputs ------------------------------------------
class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def route_of(stats: debug.RequestStats, name: str) -> dict[str, typing.Any] | None:
    return by_name(stats.snapshot()).get(name)


def test_windows_cover_the_last_1_5_and_15_minutes() -> None:
    clock = Clock(0.0)
    stats = debug.RequestStats(clock=clock)
    clock.now = 1000.5
    for index in range(1, 101):
        stats.record("/a", "GET", 500 if index % 10 == 0 else 200, index / 1000)
    clock.now = 1059.9  # the minute's slots: seconds 1000 to 1059
    row = route_of(stats, "GET /a")
    assert row is not None
    minute = row["windows"]["1m"]
    assert minute["requests"] == 100 and minute["errors"] == 10
    assert minute["error_rate"] == pytest.approx(0.1)
    assert minute["rate"] == pytest.approx(100 / (1059.9 - 1000))
    assert row["windows"]["5m"]["rate"] == pytest.approx(100 / (1059.9 - 760))
    assert row["windows"]["15m"]["rate"] == pytest.approx(100 / (1059.9 - 160))

    clock.now = 1060.0
    row = route_of(stats, "GET /a")
    assert row is not None
    assert row["windows"]["1m"] == {
        "requests": 0,
        "rate": 0.0,
        "errors": 0,
        "error_rate": None,
        "p50": None,
        "p90": None,
        "p99": None,
    }
    assert row["windows"]["5m"]["requests"] == 100
    clock.now = 1299.9  # 10-second slots 100 to 129
    assert route_of(stats, "GET /a")["windows"]["5m"]["requests"] == 100  # type: ignore[index]
    clock.now = 1300.0
    row = route_of(stats, "GET /a")
    assert row is not None
    assert row["windows"]["5m"]["requests"] == 0
    assert row["windows"]["15m"]["requests"] == 100
    chart = row["chart"]["requests"]  # slots 41 to 130, the current one last
    assert chart[-31] == 100 and sum(chart) == 100
    clock.now = 1899.9
    assert route_of(stats, "GET /a") is not None
    clock.now = 1900.0  # nothing in the last 15 minutes: the route is left out
    assert stats.snapshot()["routes"] == []

    clock.now = 1900.2  # the ring came round: old counts are gone
    stats.record("/a", "GET", 200, 0.002)
    row = route_of(stats, "GET /a")
    assert row is not None
    assert [row["windows"][name]["requests"] for name in ("1m", "5m", "15m")] == [
        1,
        1,
        1,
    ]


def test_rates_are_per_second_of_the_time_covered_since_the_start() -> None:
    clock = Clock(500.0)
    stats = debug.RequestStats(clock=clock)
    for _ in range(20):
        stats.record("/a", "GET", 200, 0.01)
    clock.now = 510.0
    row = route_of(stats, "GET /a")
    assert row is not None
    for name in ("1m", "5m", "15m"):
        assert row["windows"][name]["rate"] == pytest.approx(2.0)


def test_percentiles_are_within_the_documented_precision() -> None:
    clock = Clock(100.0)
    stats = debug.RequestStats(clock=clock)
    durations = [index / 1000 for index in range(1, 1001)]  # 1 ms to 1 s
    for seconds in durations:
        stats.record("/a", "GET", 200, seconds)
    row = route_of(stats, "GET /a")
    assert row is not None
    window = row["windows"]["1m"]
    for percent in (50, 90, 99):
        true = durations[math.ceil(percent * len(durations) / 100) - 1]
        estimate = window[f"p{percent}"]
        assert 2**-0.125 <= estimate / true <= 2**0.125, (percent, estimate, true)
    assert window["p50"] < window["p90"] <= window["p99"]


def test_percentiles_are_exact_for_equal_durations_and_beyond_the_buckets() -> None:
    clock = Clock(100.0)
    stats = debug.RequestStats(clock=clock)
    for _ in range(10):
        stats.record("/equal", "GET", 200, 0.0123)
    stats.record("/long", "GET", 200, 250.0)
    stats.record("/short", "GET", 200, 0.00002)
    routes = by_name(stats.snapshot())
    for name, seconds in (("/equal", 0.0123), ("/long", 250.0), ("/short", 0.00002)):
        window = routes[f"GET {name}"]["windows"]["15m"]
        assert window["p50"] == window["p99"] == seconds
    assert debug_stats.percentile([0] * 82, 0, 50, math.inf, 0.0) is None


def test_failed_and_slow_requests_keep_the_last_fifty_newest_first() -> None:
    clock = Clock(100.0)
    stats = debug.RequestStats(slow=0.5, clock=clock, wall_clock=lambda: 1.7e9)
    for index in range(60):
        stats.record("/a", "GET", 503, 0.01, trace_id=f"{index:032x}", path="/a")
    stats.record("/a", "GET", 200, 0.5, path="/a?")
    stats.record("/b", "POST", 200, 0.01, error=True)
    stats.record("/c", "GET", None, 0.01)  # the client went away
    stats.record("/d", "GET", 404, 0.01)  # a client error is no failure
    snapshot = stats.snapshot()
    errors = snapshot["errors"]
    assert len(errors) == 50
    assert [e["name"] for e in errors[:2]] == ["GET /c", "POST /b"]
    assert errors[2]["trace_id"] == f"{59:032x}"
    assert errors[-1]["trace_id"] == f"{12:032x}"
    assert errors[0]["status"] is None and errors[0]["error"] is True
    [slow] = snapshot["slow"]
    assert slow["duration"] == 0.5 and slow["status"] == 200 and not slow["error"]
    assert slow["time"] == 1.7e9 and slow["path"] == "/a?"
    assert debug.RequestStats(slow=None).snapshot()["slow_threshold"] is None


def test_routes_are_bounded_and_unknown_methods_share_a_row() -> None:
    stats = debug.RequestStats()
    for index in range(debug_stats.MAX_ROUTES + 50):
        stats.record(f"/r{index}", "GET", 200, 0.001)
    for method in ("BREW", "WHEN", "PROPFIND"):
        stats.record("/r0", method, 405, 0.001)
    routes = by_name(stats.snapshot())
    assert len(routes) == debug_stats.MAX_ROUTES + 1
    assert routes["(other routes)"]["windows"]["1m"]["requests"] == 50 + 3
    stats = debug.RequestStats()
    for method in ("BREW", "WHEN"):
        stats.record("/r0", method, 405, 0.001)
    assert by_name(stats.snapshot())["HTTP /r0"]["windows"]["1m"]["requests"] == 2


def test_the_package_imports_neither_tracing_nor_lifecycle() -> None:
    allowed = (
        "divak.debug",
        "divak.context",
        "divak.settings",
        "divak.semconv",
        "divak.logs",
        "divak.export",
        "divak.metrics",
    )
    imported = {
        target
        for name, targets in graph().items()
        if name.startswith("divak.debug")
        for target in targets
    }
    assert imported and [m for m in imported if not m.startswith(allowed)] == []


def test_the_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "debug_page.py"), "--requests", "20000"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"record\(\), page on +[0-9.]+ µs", result.stdout), result.stdout


# -- in a real headless browser ---------------------------------------------
def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Debian's chromium, headless, driven through the DevTools protocol."""

    def __init__(self, binary: str, profile: pathlib.Path) -> None:
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                lines.put(line)
            lines.put("")

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        self.browser_url = ""
        while not self.browser_url:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            if line == "":
                raise RuntimeError(f"chromium exited with {self.process.wait()}")
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                self.browser_url = found.group(1)
        self.port = int(re.search(r":(\d+)/", self.browser_url).group(1))  # type: ignore[union-attr]

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(15)

    async def page(self) -> DevTools:
        response = await fetch(f"http://127.0.0.1:{self.port}/json/list")
        [target] = [t for t in json.loads(response.body) if t["type"] == "page"]
        connection = await websocket.websocket_connect(
            target["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024
        )
        return DevTools(connection)


class DevTools:
    """One page's DevTools protocol session: commands and the events seen."""

    def __init__(self, connection: websocket.WebSocketClientConnection) -> None:
        self.connection = connection
        self.last_id = 0
        self.events: list[dict[str, typing.Any]] = []

    async def _receive(self) -> dict[str, typing.Any]:
        message = await asyncio.wait_for(self.connection.read_message(), 60)
        if message is None:
            raise RuntimeError("the DevTools connection closed")
        data = json.loads(message)
        if "method" in data:
            self.events.append(data)
        return data

    async def call(self, method: str, **params: typing.Any) -> dict[str, typing.Any]:
        self.last_id += 1
        sent = self.last_id
        await self.connection.write_message(
            json.dumps({"id": sent, "method": method, "params": params})
        )
        while True:
            data = await self._receive()
            if data.get("id") == sent:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]

    async def wait_for(self, event: str, seen: int) -> dict[str, typing.Any]:
        """The first *event* after the first *seen* events."""
        while True:
            for data in self.events[seen:]:
                if data["method"] == event:
                    return data
            seen = len(self.events)
            await self._receive()

    async def load(self, url: str, width: int, height: int = 700) -> None:
        """Open *url* in a window of *width* × *height* pixels; wait for its load."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        seen = len(self.events)
        await self.call("Page.navigate", url=url)
        await self.wait_for("Page.loadEventFired", seen)

    async def evaluate(self, expression: str) -> typing.Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def console_errors(self) -> list[dict[str, typing.Any]]:
        return [
            event
            for event in self.events
            if event["method"] == "Runtime.exceptionThrown"
            or (
                event["method"] == "Log.entryAdded"
                and event["params"]["entry"]["level"] == "error"
            )
            or (
                event["method"] == "Runtime.consoleAPICalled"
                and event["params"]["type"] == "error"
            )
        ]


def earlier_traffic(stats: debug.RequestStats, clock: Clock) -> None:
    """A quarter of an hour of earlier traffic, so that the charts have a history."""
    start = clock.now
    ids = random.Random(22)
    for second in range(900, 0, -2):
        clock.now = start - second
        wave = 1 + math.sin(second / 90)
        stats.record("/items/{item_id}", "GET", 200, 0.004 * (1 + wave))
        stats.record("/items/{item_id}", "GET", 200, 0.012 * (1 + wave))
        if second % 6 == 0:
            spike = 0.04 if second % 240 == 0 else 0.0
            stats.record("/slow", "GET", 200, 0.03 + 0.006 * wave + spike, path="/slow")
        failed = second % 210 == 0
        stats.record(
            "/fail",
            "GET",
            500 if failed else 200,
            0.018 + 0.003 * wave,
            f"{ids.getrandbits(128):032x}",
            path="/fail",
        )
    clock.now = start


TITLE = "divak debug page · checkout"


def test_the_page_in_a_headless_browser(tmp_path: pathlib.Path) -> None:
    """The page loads with no console error and shows the exercised routes.

    The screenshot is written to ``$DIVAK_TEST_SCREENSHOT`` when that names a
    file (the documentation's picture comes from here).
    """
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary on PATH (.ci/run installs Debian's chromium)")

    async def main() -> bytes:
        clock = Clock(time.monotonic() - 900)
        stats = debug.RequestStats(
            slow=0.05,
            clock=clock,
            wall_clock=lambda: time.time() + clock.now - time.monotonic(),
        )
        clock.now += 900
        earlier_traffic(stats, clock)
        app = Service(stats, divak_trace_url=TRACE_URL)
        app.set_divak_service("checkout")
        app.started -= 937  # as old as its statistics
        port = serve(app)
        await exercise(port)
        clock.now = time.monotonic()
        url = f"http://127.0.0.1:{port}/divak"
        browser = Browser(binary, tmp_path / "profile")
        try:
            page = await browser.page()
            for domain in ("Runtime", "Log", "Page"):
                await page.call(f"{domain}.enable")
            await page.load(url, width=1100)
            text = await page.evaluate("document.body.innerText")
            for name in ("GET /items/{item_id}", "GET /fail", "GET /slow"):
                assert name in text
            assert TRACE_ID in text
            assert await page.evaluate("document.title") == TITLE
            assert await page.evaluate("document.querySelectorAll('svg').length") == 4
            link = f"document.querySelector('a[href*=\"{TRACE_ID}\"]').href"
            trace_url = TRACE_URL.replace("{trace_id}", TRACE_ID)
            assert await page.evaluate(link) == trace_url
            width = await page.evaluate(
                "Math.ceil(document.querySelector('table').getBoundingClientRect().right)"
            )
            height = await page.evaluate("document.documentElement.scrollHeight")
            await page.load(url, width=width + 20, height=height)
            shot = await page.call("Page.captureScreenshot", format="png")
            assert page.console_errors() == []

            # A hostile route and path are shown as text; nothing runs.
            await fetch(f"http://127.0.0.1:{port}/evil/{HOSTILE}/x<b>")
            await page.load(url, width=1100)
            text = await page.evaluate("document.body.innerText")
            assert HOSTILE in text and "/x<b>" in text
            assert await page.evaluate("document.scripts.length") == 0
            assert await page.evaluate("document.querySelectorAll('b').length") == 0
            assert await page.evaluate("document.title") == TITLE
            assert page.console_errors() == []
            page.connection.close()
            return base64.b64decode(shot["data"])
        finally:
            browser.close()

    picture = run(main())
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "debug-page.png").write_bytes(picture)
    target = os.environ.get("DIVAK_TEST_SCREENSHOT")
    if target:
        pathlib.Path(target).write_bytes(picture)
