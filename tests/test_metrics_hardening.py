"""Metrics that hold up against hostile input: bounded series, scrapes that
never block the IOLoop, any ``Accept`` header.  Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
import random
import string
import threading
import typing

import pytest
from opentelemetry import metrics as otel_metrics
from prometheus_client import exposition as prometheus_exposition
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from tornado import httpclient, web

import divak
from divak.metrics import series as metric_series
from divak.semconv import KNOWN_METHODS
from tests.conftest import listen, run

DURATION = "http_server_request_duration_seconds"
OPERATIONS = "divak_operation_duration_seconds"

#: prometheus_client releases with the text format 1.0.0 (0.22 and later)
#: answer it when asked; older ones answer 0.0.4 and know OpenMetrics 0.0.1.
NEWER_TEXT = (
    "text/plain; version=1.0.0"
    if hasattr(prometheus_exposition, "CONTENT_TYPE_PLAIN_1_0_0")
    else None
)


class ItemHandler(divak.RequestTracker, web.RequestHandler):
    def get(self, item_id: str) -> None:
        self.write({"id": item_id})


class OperationHandler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        # a handler that names operations after its input
        name = self.get_argument("name") * int(self.get_argument("times", "1"))
        with self.record_operation(name + self.get_argument("suffix", "")):
            pass
        self.write("ok")


class TaggedEventHandler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.count_divak_event("tagged", **{self.get_argument("key"): "v"})
        self.write("ok")


class ScrapeHandler(divak.MetricsHandler):
    def on_finish(self) -> None:
        self.application.scrapes_finished += 1


class Application(divak.ProbabilisticSampler, divak.Recorder, divak.Application):
    def __init__(self, **settings: typing.Any) -> None:
        super().__init__(
            [
                (r"/items/(?P<item_id>\d+)", ItemHandler),
                (r"/operations", OperationHandler),
                (r"/events", TaggedEventHandler),
                (r"/metrics", ScrapeHandler),
            ],
            **settings,
        )
        self.set_divak_service("hardened")
        self.set_divak_sample_probability(0.0)  # this is about metrics only
        self.scrapes_finished = 0


async def fetch(port: int, path: str, **kwargs: typing.Any) -> httpclient.HTTPResponse:
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(
            f"http://127.0.0.1:{port}{path}",
            raise_error=False,
            request_timeout=60,
            **kwargs,
        )
    finally:
        client.close()


async def scrape(port: int) -> dict[str, typing.Any]:
    response = await fetch(port, "/metrics")
    assert response.code == 200
    return {f.name: f for f in parse_text(response.body.decode())}


def samples(families: dict[str, typing.Any], name: str) -> list[typing.Any]:
    family = families.get(name.removesuffix("_count").removesuffix("_total"))
    return [s for s in family.samples if s.name == name] if family else []


_TCHAR = string.ascii_uppercase + string.digits + "-_.!~"


def random_method(rng: random.Random) -> str:
    return "".join(rng.choices(_TCHAR, k=rng.randint(1000, 2000)))


async def send_methods(port: int, methods: list[str]) -> collections.Counter:
    """Send each method on a keep-alive connection; count the answers' statuses."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses: collections.Counter = collections.Counter()
    try:
        for method in methods:
            writer.write(f"{method} /items/1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            statuses[status] += 1
    finally:
        writer.close()
    return statuses


# -- 1. cardinality ----------------------------------------------------------
def test_unknown_methods_are_other_and_never_crowd_out_real_series() -> None:
    async def main() -> None:
        app = Application()  # the default cardinality limit, 2000 sets
        port = listen(app)
        rng = random.Random(20)
        methods = [random_method(rng) for _ in range(2400)]
        assert not KNOWN_METHODS & set(methods)
        answered = await asyncio.gather(
            *(send_methods(port, methods[i::8]) for i in range(8))
        )
        assert sum(answered, collections.Counter()) == {"405": 2400}
        for _ in range(3):
            assert (await fetch(port, "/items/7")).code == 200
        assert (await fetch(port, "/items/7", method="DELETE")).code == 405

        families = await scrape(port)
        durations = {
            (s.labels["http_request_method"], s.labels["http_response_status_code"]): (
                s.value
            )
            for s in samples(families, DURATION + "_count")
        }
        # the made-up methods are one series, and the real ones are not lost
        assert durations == {
            ("_OTHER", "405"): 2400,
            ("GET", "200"): 3,
            ("DELETE", "405"): 1,
        }
        active = {
            s.labels["http_request_method"]: s.value
            for s in samples(families, "http_server_active_requests")
        }
        assert active == {"_OTHER": 0, "GET": 1, "DELETE": 0}  # 1: this scrape
        assert "otel_metric_overflow" not in str(families)
        # what the application keeps per made-up method: nothing
        assert len(app.divak_metrics._active) == 3

    run(main())


def test_active_requests_past_the_limit_share_the_overflow_entry() -> None:
    async def main() -> None:
        app = Application(metrics_cardinality_limit=1)
        port = listen(app)
        for method in ("GET", "DELETE", "PUT", "PATCH", "OPTIONS"):
            body = "" if method in ("PUT", "PATCH") else None
            assert (await fetch(port, "/items/1", method=method, body=body)).code in (
                200,
                405,
            )
        families = await scrape(port)
        active = sorted(
            (
                s.labels.get("http_request_method", ""),
                s.labels.get("otel_metric_overflow", ""),
            )
            for s in samples(families, "http_server_active_requests")
        )
        assert active == [("", "true"), ("GET", "")]
        assert len(app.divak_metrics._active) == 2

    run(main())


def test_client_methods_and_hosts_are_bounded() -> None:
    async def main() -> None:
        app = Application(metrics_cardinality_limit=100)
        port = listen(app)
        rng = random.Random(21)
        app_metrics = app.divak_metrics
        for _ in range(300):
            app_metrics.client_request_finished(
                random_method(rng), "inventory", 8080, 200, 0.01
            )
        app_metrics.client_request_finished("GET", "h" * 5000, 8080, 200, 0.01)
        app_metrics.client_request_finished("GET", "h" * 6000, 8080, 200, 0.01)
        families = await scrape(port)
        name = "http_client_request_duration_seconds_count"
        got = {
            (s.labels["http_request_method"], s.labels["server_address"]): s.value
            for s in samples(families, name)
        }
        long_host = "h" * metric_series.MAX_VALUE_LENGTH
        assert got == {("_OTHER", "inventory"): 300, ("GET", long_host): 2}

    run(main())


def test_long_operation_names_share_one_bounded_series() -> None:
    async def main() -> None:
        app = Application(metrics_cardinality_limit=50)
        port = listen(app)
        # 1,000 distinct 30 KB names, alike in their first 30,000 characters
        for index in range(1000):
            response = await fetch(
                port, f"/operations?name=x&times=30000&suffix={index}"
            )
            assert response.code == 200
        assert (await fetch(port, "/operations?name=query-db")).code == 200

        families = await scrape(port)
        operations = {
            s.labels["divak_operation_name"]: s.value
            for s in samples(families, OPERATIONS + "_count")
        }
        assert operations == {"x" * metric_series.MAX_VALUE_LENGTH: 1000, "query-db": 1}
        assert "otel_metric_overflow" not in str(families)
        # the keys the application keeps are as bounded as the labels
        bound = app.divak_metrics._series_of(divak.metrics.OPERATION_DURATION).bound
        assert max(len(str(key)) for key in bound) <= metric_series.MAX_VALUE_LENGTH

    run(main())


def test_each_sample_carries_only_its_own_labels() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        for index in range(300):  # 300 series, each with its own attribute name
            assert (await fetch(port, f"/events?key=k{index}")).code == 200
        families = await scrape(port)
        events = samples(families, "divak_events_total")
        assert len(events) == 300
        scope = {"otel_scope_name", "otel_scope_version"}  # on every sample
        assert {frozenset(s.labels) for s in events} == {
            frozenset({"divak_event_name", f"k{index}", *scope}) for index in range(300)
        }

    run(main())


# -- 2. the scrape does not block the IOLoop ---------------------------------
def test_requests_are_answered_while_a_scrape_is_being_collected() -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        collecting = threading.Event()
        release = threading.Event()

        def slow_callback(
            options: otel_metrics.CallbackOptions,
        ) -> typing.Iterator[otel_metrics.Observation]:
            # an observable instrument of the application that takes its
            # time, as one that asks a database would
            collecting.set()
            release.wait(30)
            yield otel_metrics.Observation(1)

        app.divak_metrics.meter.create_observable_gauge("slow.gauge", [slow_callback])
        scraping = asyncio.ensure_future(fetch(port, "/metrics"))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, collecting.wait, 30)
        try:
            # the scrape is being collected: the IOLoop still serves
            response = await asyncio.wait_for(fetch(port, "/items/3"), 30)
            assert response.code == 200
            assert app.scrapes_finished == 0
            assert not scraping.done()
        finally:
            release.set()
        scraped = await scraping
        assert scraped.code == 200
        # (labelled with the scope, as every sample)
        assert 'slow_gauge{otel_scope_name="divak",' in scraped.body.decode()
        assert app.scrapes_finished == 1

    run(main())


# -- 3. any Accept header ----------------------------------------------------
TEXT = "text/plain; version=0.0.4"
OPENMETRICS = "application/openmetrics-text"


@pytest.mark.parametrize(
    "accept,expected",
    [
        ("application/openmetrics-text; version=abc", TEXT),
        ("application/openmetrics-text; version=1.x", TEXT),
        ("application/openmetrics-text;version=1.0.0-rc1", TEXT),
        ("application/openmetrics-text; version=..", TEXT),
        ("text/plain; version=garbage", TEXT),
        # The text format 1.0.0 and which OpenMetrics versions are known
        # depend on prometheus_client's release; never a 500 either way.
        ("text/plain;version=1.0.0;escaping=nonsense", NEWER_TEXT or TEXT),
        ('application/openmetrics-text; version="1.0.0"', OPENMETRICS),
        ("application/openmetrics-text; version=", OPENMETRICS),
        (
            "application/openmetrics-text; version=0.0.1",
            TEXT if NEWER_TEXT else OPENMETRICS,
        ),
        (";;;,,,==;version", TEXT),
        ("garbage" * 1000, TEXT),
        ("*/*", TEXT),
        ("application/openmetrics-text; version=1.x, text/plain", TEXT),
        (
            "application/openmetrics-text; version=x,"
            " application/openmetrics-text; version=1.0.0",
            OPENMETRICS,
        ),
    ],
)
def test_any_accept_header_gets_an_answer(accept: str, expected: str) -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200
        response = await fetch(port, "/metrics", headers={"Accept": accept})
        assert response.code == 200
        content_type = response.headers["Content-Type"]
        assert content_type.startswith(expected), content_type
        parse = parse_openmetrics if expected == OPENMETRICS else parse_text
        names = {family.name for family in parse(response.body.decode())}
        assert DURATION in names

    run(main())
