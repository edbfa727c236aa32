"""The OTEL_* environment variables change what a real service does."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import urllib.request

import pytest
from tornado import httpclient, web

import divak
from divak import settings as divak_settings
from divak.export.queue import BatchSettings, batch_settings
from divak.tracing.excluded import excluded_urls

from .conftest import ThreadedServer, flush, listen, run, start_service

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No OTEL_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


class Downstream(web.RequestHandler):
    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(dict(self.request.headers))
        self.set_header("X-Client-Answer", "yes")
        self.write("ok")


class Call(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        response = await self.send_request(self.settings["downstream"])
        self.write(response.body)


class App(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, collector, propagators=(), probability=None, **settings):
        super().__init__([(r"/call", Call)], **settings)
        self.set_divak_service("env-test")
        if collector is not None:
            self.add_divak_reporter(divak.ZipkinReporter(collector.url))
        for propagator in propagators:
            self.add_divak_propagator(propagator)
        if probability is not None:
            self.set_divak_sample_probability(probability)


def call(collector, headers=None, **app_kwargs) -> tuple[list[dict], App]:
    """Serve one request through App and a downstream; return what it sent."""

    async def scenario():
        seen: list[dict] = []
        down_port = listen(web.Application([("/", Downstream, {"seen": seen})]))
        app = App(collector, downstream=f"http://127.0.0.1:{down_port}/", **app_kwargs)
        port = listen(app)
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/call", headers=headers or {}
        )
        assert response.code == 200
        await flush(app)
        return seen, app

    return run(scenario())


# -- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG ----------------------------


@pytest.mark.parametrize(
    ("sampler", "argument", "headers", "exported"),
    [
        ("always_off", None, {}, 0),
        ("always_off", None, {"traceparent": TRACEPARENT}, 0),
        ("traceidratio", "0", {}, 0),
        ("traceidratio", "1", {}, 2),
        ("parentbased_always_off", None, {}, 0),
        ("parentbased_always_off", None, {"traceparent": TRACEPARENT}, 2),
        ("always_on", None, {"traceparent": UNSAMPLED_PARENT}, 2),
        ("parentbased_always_on", None, {"traceparent": UNSAMPLED_PARENT}, 0),
        ("no_such_sampler", None, {}, 2),
    ],
)
def test_traces_sampler_decides_what_is_exported(
    collector, monkeypatch, sampler, argument, headers, exported
):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if argument is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    call(collector, headers)
    assert len(collector.spans) == exported, collector.spans


def test_sample_probability_set_in_code_wins_over_the_environment(
    collector, monkeypatch
):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    call(collector, probability=1.0)
    assert {s["kind"] for s in collector.spans} == {"SERVER", "CLIENT"}


def test_invalid_sampler_argument_is_logged_and_samples_everything(
    collector, monkeypatch, log_records
):
    monkeypatch.setattr(divak_settings, "_warned", set())
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "half")
    call(collector)
    assert len(collector.spans) == 2
    warnings = [r.getMessage() for r in log_records if r.name == "divak.environment"]
    assert any("OTEL_TRACES_SAMPLER_ARG='half'" in m for m in warnings), warnings


# -- OTEL_PROPAGATORS ---------------------------------------------------------


def _trace_headers(sent: dict) -> set[str]:
    names = {"traceparent", "tracestate", "baggage", "b3"}
    return {
        n.lower() for n in sent if n.lower() in names or n.lower().startswith("x-b3")
    }


def test_default_propagators_are_tracecontext_and_baggage(collector):
    seen, _ = call(collector, {"traceparent": TRACEPARENT, "baggage": "tenant=blue"})
    assert seen[0]["Traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert seen[0]["Baggage"] == "tenant=blue"
    assert not any(n.startswith("x-b3") for n in _trace_headers(seen[0]))


def test_b3multi_propagator_sends_x_b3_headers(collector, monkeypatch):
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    seen, _ = call(
        collector,
        {
            "X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124",
            "X-B3-SpanId": "a2fb4a1d1a96d312",
            "X-B3-Sampled": "1",
        },
    )
    sent = seen[0]
    assert sent["X-B3-Traceid"] == "463ac35c9f6413ad48485a3953bb6124"
    assert re.fullmatch("[0-9a-f]{16}", sent["X-B3-Spanid"])
    assert sent["X-B3-Sampled"] == "1"
    assert _trace_headers(sent) <= {
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    }
    server = next(s for s in collector.spans if s["kind"] == "SERVER")
    assert server["traceId"] == "463ac35c9f6413ad48485a3953bb6124"


def test_b3_single_and_tracecontext_listed_together(collector, monkeypatch):
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3, tracecontext")
    seen, _ = call(collector)
    assert {"b3", "traceparent"} <= _trace_headers(seen[0])
    assert seen[0]["B3"].split("-")[0] == seen[0]["Traceparent"].split("-")[1]


def test_none_propagator_sends_no_trace_header(collector, monkeypatch):
    monkeypatch.setenv("OTEL_PROPAGATORS", "none")
    seen, _ = call(collector, {"traceparent": TRACEPARENT})
    assert _trace_headers(seen[0]) == set()
    server = next(s for s in collector.spans if s["kind"] == "SERVER")
    assert server["traceId"] != TRACEPARENT.split("-")[1]  # not continued


def test_propagators_added_in_code_win(collector, monkeypatch):
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    seen, _ = call(collector, propagators=[divak.TraceContextPropagation()])
    assert _trace_headers(seen[0]) == {"traceparent"}


def test_unknown_propagator_is_skipped_with_a_warning(
    collector, monkeypatch, log_records
):
    monkeypatch.setattr(divak_settings, "_warned", set())
    monkeypatch.setenv("OTEL_PROPAGATORS", "jaeger,tracecontext")
    seen, _ = call(collector)
    assert _trace_headers(seen[0]) == {"traceparent"}
    messages = [r.getMessage() for r in log_records if r.levelno == logging.WARNING]
    assert any("'jaeger'" in m and "OTEL_PROPAGATORS" in m for m in messages)


_PLUGIN = """
from opentelemetry import trace
from opentelemetry.propagators import textmap


class HopPropagator(textmap.TextMapPropagator):
    \"\"\"Sends the trace id in a header of its own.\"\"\"

    def extract(self, carrier, context=None, getter=textmap.default_getter):
        return context

    def inject(self, carrier, context=None, setter=textmap.default_setter):
        span_context = trace.get_current_span(context).get_span_context()
        setter.set(carrier, "x-hop-trace", format(span_context.trace_id, "032x"))

    @property
    def fields(self):
        return {"x-hop-trace"}
"""


@pytest.fixture
def hop_plugin(tmp_path, monkeypatch):
    """An installed distribution registering the propagator ``hop``."""
    (tmp_path / "divak_hop_plugin.py").write_text(_PLUGIN)
    info = tmp_path / "divak_hop_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: divak-hop-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[opentelemetry_propagator]\nhop = divak_hop_plugin:HopPropagator\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_propagator_names_resolve_through_entry_points(
    collector, monkeypatch, hop_plugin
):
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,hop")
    seen, _ = call(collector, {"traceparent": TRACEPARENT})
    trace_id = TRACEPARENT.split("-")[1]
    assert seen[0]["X-Hop-Trace"] == trace_id  # the plug-in's header, downstream
    assert seen[0]["Traceparent"].split("-")[1] == trace_id


def test_builtin_propagator_names_win_over_entry_points(collector, monkeypatch):
    # opentelemetry-propagator-b3 registers "b3" too; divak's B3 is used.
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    seen, app = call(collector, {"traceparent": TRACEPARENT})
    assert "B3" in seen[0]
    assert type(app.divak_propagation.propagators[0]).__module__.startswith("divak.")


# -- OTEL_TRACES_EXPORTER and the exporters' variables ------------------------


def _serve_plain(env: dict[str, str]) -> tuple[str, int]:
    """Run tests/services/plain.py with *env*, answer one request, SIGTERM it."""
    process, port = start_service(["tests/services/plain.py"], env=env)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=10) as r:
            assert r.read() == b"hello"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    return output, process.returncode


def test_exporter_zipkin_sends_spans_to_the_endpoint(collector):
    output, status = _serve_plain(
        {
            "OTEL_TRACES_EXPORTER": "zipkin",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": collector.url + "/spans",
        }
    )
    assert status == 0, output
    spans = collector.wait_for(lambda s: any(x["name"] == "GET /hello" for x in s))
    assert spans[0]["localEndpoint"]["serviceName"] == "plain"
    assert "no reporter configured" not in output


def test_exporter_none_exports_nothing_and_does_not_warn(collector):
    output, status = _serve_plain(
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": collector.url + "/spans",
        }
    )
    assert status == 0, output
    assert collector.spans == []
    assert "no reporter configured" not in output
    assert "divak.spans" not in output


def test_without_exporter_settings_spans_go_to_the_log_with_one_warning():
    output, status = _serve_plain({})
    assert status == 0, output
    warnings = [
        line for line in output.splitlines() if "no reporter configured" in line
    ]
    assert len(warnings) == 1, output
    assert "WARNING" in warnings[0]
    assert "OTEL_EXPORTER_ZIPKIN_ENDPOINT" in warnings[0]
    assert re.search(r"SERVER GET /hello trace_id=[0-9a-f]{32}", output), output


def test_exporter_console_writes_spans_to_standard_output():
    output, status = _serve_plain({"OTEL_TRACES_EXPORTER": "console"})
    assert status == 0, output
    assert '"name": "GET /hello"' in output
    assert "no reporter configured" not in output


def test_zipkin_timeout_is_in_milliseconds(monkeypatch):
    from divak.testing import ZipkinCollector

    with ZipkinCollector(delay=1.0) as slow:
        monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", slow.url)
        monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "200")
        _, app = call(None)
        # The collector answers after 1 s: the 200 ms upload timed out.
        assert app.divak_dropped_spans == 2

    with ZipkinCollector(delay=0.3) as slowish:
        monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", slowish.url)
        monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "5000")
        _, app = call(None)
        assert app.divak_dropped_spans == 0
        assert len(slowish.spans) == 2


class _OTLPCollector(ThreadedServer):
    """A real OTLP/HTTP endpoint on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        posts = self.posts

        class Traces(web.RequestHandler):
            def post(self) -> None:
                posts.append(
                    (self.request.path, dict(self.request.headers), self.request.body)
                )
                self.set_header("Content-Type", "application/x-protobuf")

        super().__init__(web.Application([(r"/.*", Traces)]))


def test_exporter_otlp_uses_the_otlp_endpoint_headers_and_timeout(monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    otlp = _OTLPCollector()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            f"http://127.0.0.1:{otlp.port}/custom/traces",
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret-1")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3000")
        _, app = call(None)
    finally:
        otlp.stop()
    reporter = app.divak_span_queues[0].reporter
    assert isinstance(reporter, divak.OTLPReporter)
    assert [path for path, _, _ in otlp.posts] == ["/custom/traces"]
    path, headers, body = otlp.posts[0]
    assert headers["X-Api-Key"] == "secret-1"
    request = ExportTraceServiceRequest.FromString(body)
    names = {
        span.name
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert names == {"GET /call", "GET"}


def test_exporter_names_resolve_through_entry_points(collector, monkeypatch):
    pytest.importorskip("opentelemetry.exporter.zipkin.json")
    from opentelemetry.exporter.zipkin.json import ZipkinExporter

    # divak has no built-in "zipkin_json": OpenTelemetry's exporter, found
    # through its opentelemetry_traces_exporter entry point, reads its own
    # endpoint variable and runs behind divak's span queue.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json")
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", collector.url + "/spans")
    _, app = call(None)
    (queue,) = app.divak_span_queues
    assert isinstance(queue.reporter, ZipkinExporter)
    spans = collector.wait_for(lambda s: len(s) == 2)
    assert sorted(span["name"] for span in spans) == ["GET", "GET /call"]


_NOT_AN_EXPORTER = """
class Thing:
    pass
"""


def test_an_entry_point_that_is_not_an_exporter_is_skipped(
    tmp_path, monkeypatch, log_records
):
    (tmp_path / "divak_thing_plugin.py").write_text(_NOT_AN_EXPORTER)
    info = tmp_path / "divak_thing_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: divak-thing-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[opentelemetry_traces_exporter]\nthing = divak_thing_plugin:Thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "thing,nowhere,console")
    reporters = divak.export.reporters_from_env()
    assert [type(r).__name__ for r in reporters] == ["ConsoleSpanExporter"]
    warnings = [r.getMessage() for r in log_records if r.levelno == logging.WARNING]
    assert any("'thing'" in w and "not a SpanExporter" in w for w in warnings)
    assert any("'nowhere'" in w for w in warnings), warnings


def test_exporter_added_in_code_wins(collector, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    call(collector)
    assert len(collector.spans) == 2


def test_batch_settings_read_the_bsp_variables(monkeypatch):
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "1500")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "not a number")
    settings = batch_settings()
    assert settings == BatchSettings(
        max_queue_size=64,
        max_export_batch_size=64,  # divak's default, the value is invalid
        schedule_delay=0.25,
        export_timeout=1.5,
    )


# -- excluded URLs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "env", "excluded", "traced"),
    [
        (
            ["/status", r"^/health$"],
            {},
            ["/status", "/status?x=1", "/health"],
            ["/healthz", "/items/1"],
        ),
        ("/status, /metrics", {}, ["/status", "/metrics"], ["/items"]),
        (
            None,
            {"OTEL_PYTHON_EXCLUDED_URLS": "ready,live"},
            ["/ready", "/x/live"],
            ["/items"],
        ),
        (
            None,
            {
                "OTEL_PYTHON_TORNADO_EXCLUDED_URLS": "^/tornado",
                "OTEL_PYTHON_EXCLUDED_URLS": "/generic",
            },
            ["/tornado/x"],
            ["/generic"],
        ),
        ([], {"OTEL_PYTHON_EXCLUDED_URLS": "/status"}, [], ["/status"]),
        (None, {}, [], ["/status", "/"]),
    ],
)
def test_excluded_urls(monkeypatch, setting, env, excluded, traced):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = {} if setting is None else {"divak_excluded_urls": setting}
    is_excluded = excluded_urls(settings)
    assert [url for url in excluded + traced if is_excluded(url)] == excluded


def test_invalid_excluded_url_pattern_fails_at_once():
    with pytest.raises(re.error):
        excluded_urls({"divak_excluded_urls": ["/status(", "/ok"]})


# -- header capture -----------------------------------------------------------


def test_capture_header_variables_for_server_and_client_spans(collector, monkeypatch):
    prefix = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"
    monkeypatch.setenv(prefix + "SERVER_REQUEST", "x-tenant-.*, x-api-token")
    monkeypatch.setenv(prefix + "SERVER_RESPONSE", "content-type")
    monkeypatch.setenv(prefix + "CLIENT_REQUEST", "traceparent")
    monkeypatch.setenv(prefix + "CLIENT_RESPONSE", "X-CLIENT-.*")
    monkeypatch.setenv(prefix + "SANITIZE_FIELDS", "token")
    call(
        collector,
        {
            "X-Tenant-Id": "blue",
            "X-Tenant-Region": "eu",
            "X-API-Token": "s3cret",
            "X-Tenant": "not matched: the pattern must match the whole name",
        },
    )
    text = json.dumps(collector.spans)
    assert "s3cret" not in text and "not matched" not in text
    server = next(s for s in collector.spans if s["kind"] == "SERVER")
    client = next(s for s in collector.spans if s["kind"] == "CLIENT")
    tags = server["tags"]
    assert "blue" in tags["http.request.header.x-tenant-id"]
    assert "eu" in tags["http.request.header.x-tenant-region"]
    assert "REDACTED" in tags["http.request.header.x-api-token"]
    assert "http.response.header.content-type" in tags
    assert "http.request.header.traceparent" not in tags
    assert client["traceId"] in client["tags"]["http.request.header.traceparent"]
    assert "yes" in client["tags"]["http.response.header.x-client-answer"]
    assert "http.request.header.x-tenant-id" not in client["tags"]


def test_capture_settings_win_over_the_variables(collector, monkeypatch):
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-tenant-.*"
    )
    call(
        collector,
        {"X-Tenant-Id": "blue", "X-Team": "red"},
        divak_capture_request_headers=["X-Team"],
    )
    server = next(s for s in collector.spans if s["kind"] == "SERVER")
    assert "red" in server["tags"]["http.request.header.x-team"]
    assert "http.request.header.x-tenant-id" not in server["tags"]
