"""Traces, metrics and logs of a divak service, as an OpenTelemetry setup sees them.

Each scenario runs ``tests/services/otel_signals.py`` in a subprocess
(global providers and the root logger's handlers are per process), with
the ``OTEL_*`` variables a team would set, against a real OTLP/HTTP
receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import typing

import pytest
from opentelemetry.sdk import version as sdk_version
from prometheus_client.parser import text_string_to_metric_families
from tornado import web

from divak import __version__
from divak.metrics import SCHEMA_URL
from tests.conftest import ROOT, ThreadedServer

pytest.importorskip("opentelemetry.proto.collector.logs.v1.logs_service_pb2")

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)


class Receiver(web.RequestHandler):
    """An OTLP/HTTP receiver: keeps every decoded request, by path."""

    MESSAGES: typing.ClassVar[dict[str, type]] = {
        "/v1/logs": ExportLogsServiceRequest,
        "/v1/metrics": ExportMetricsServiceRequest,
    }

    def initialize(self, received: dict[str, list], lock: threading.Lock) -> None:
        self.received = received
        self.lock = lock

    def post(self) -> None:
        message = self.MESSAGES[self.request.path]()
        message.ParseFromString(self.request.body)
        with self.lock:
            self.received.setdefault(self.request.path, []).append(message)
        self.set_header("Content-Type", "application/x-protobuf")
        self.finish(b"")


@pytest.fixture
def receiver() -> typing.Iterator[tuple[str, dict[str, list]]]:
    received: dict[str, list] = {}
    app = web.Application(
        [(r"/v1/.*", Receiver, {"received": received, "lock": threading.Lock()})]
    )
    server = ThreadedServer(app)
    try:
        yield f"http://127.0.0.1:{server.port}", received
    finally:
        server.stop()


def run_service(mode: str, linger: float = 0, **env: str) -> tuple[dict, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "tests/services/otel_signals.py", mode, str(linger)],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    return seen, result.stdout, result.stderr


def attributes(items: typing.Iterable[typing.Any]) -> dict[str, str]:
    return {a.key: a.value.string_value for a in items}


def target_info(body: str) -> dict[str, str]:
    for family in text_string_to_metric_families(body):
        if family.name == "target_info":
            [sample] = family.samples
            return sample.labels
    raise AssertionError("no target_info")


# -- one resource -------------------------------------------------------------
def test_traces_metrics_and_logs_share_one_resource(receiver) -> None:
    endpoint, received = receiver
    seen, _, stderr = run_service(
        "own", OTEL_LOGS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint
    )
    assert seen["work"] == 200 and seen["scrape"]["code"] == 200
    [server_span] = [s for s in seen["spans"] if s["name"] == "GET /work"]
    spans_resource = server_span["resource"]
    instance = spans_resource["service.instance.id"]
    assert {s["resource"]["service.instance.id"] for s in seen["spans"]} == {instance}
    # Metrics: target_info holds the resource of the spans.
    target = target_info(seen["scrape"]["body"])
    assert target["service_instance_id"] == instance
    assert target["service_name"] == spans_resource["service.name"] == "signals"
    # Logs: exported through the SDK's LoggerProvider, flushed at exit,
    # with the same resource and the ids of the request they were logged in.
    logs = received["/v1/logs"]
    [resource_logs] = {id(r): r for m in logs for r in m.resource_logs}.values()
    assert attributes(resource_logs.resource.attributes) == {
        k: str(v) for k, v in spans_resource.items()
    }
    records = [
        record
        for scope_logs in resource_logs.scope_logs
        for record in scope_logs.log_records
        if record.body.string_value == "working on it"
    ]
    [record] = records
    assert record.trace_id.hex() == server_span["trace_id"]
    assert record.span_id.hex() == server_span["span_id"]
    assert record.severity_text == "WARN"


# -- global providers ---------------------------------------------------------
def test_a_global_meter_provider_records_divak_instruments() -> None:
    seen, _, stderr = run_service("global-meter")
    assert seen["work"] == 200
    by_name = {m["name"]: m for m in seen["user_metrics"]}
    # The user's own reader sees divak's instruments, in divak's scope.
    duration = by_name["http.server.request.duration"]
    assert duration["scope"] == ["divak", __version__, SCHEMA_URL]
    assert duration["points"] >= 1
    assert "process.cpu.time" in by_name
    # divak adds no reader to a provider it did not make: its scrape
    # endpoint says so, and Prometheus shows the target down with the reason.
    assert seen["scrape"]["code"] == 404
    assert "global MeterProvider" in seen["scrape"]["body"]
    assert "divak_global_provider" in seen["scrape"]["body"]


def test_a_private_meter_provider_leaves_the_global_one_alone() -> None:
    seen, _, _ = run_service("global-meter-private")
    assert seen["scrape"]["code"] == 200
    assert "http_server_request_duration_seconds" in seen["scrape"]["body"]
    assert not [m for m in seen["user_metrics"] if m["scope"][0] == "divak"]


# -- the variables ------------------------------------------------------------
def test_otel_metrics_exporter_otlp_pushes_at_the_export_interval(receiver) -> None:
    endpoint, received = receiver
    seen, _, _ = run_service(
        "own",
        linger=1.5,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="100",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )
    assert seen["scrape"]["code"] == 404
    assert "OTEL_METRICS_EXPORTER" in seen["scrape"]["body"]
    pushes = received["/v1/metrics"]
    # Every 100 ms for the 1.5 s the service lingered (none in that time
    # with the default, 60 s), and once more at shutdown.
    assert len(pushes) >= 3
    names = {
        metric.name
        for message in pushes
        for resource_metrics in message.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert "http.server.request.duration" in names
    scope = pushes[-1].resource_metrics[0].scope_metrics[0]
    assert scope.scope.name == "divak"
    # The OTLP encoder of older SDKs (the lowest supported set) leaves the
    # scope's schema URL out; the SDK divak pins sends it.
    if sdk_version.__version__ >= "1.40":
        assert scope.schema_url == SCHEMA_URL


def test_otel_metrics_exporter_names_resolve_through_entry_points(receiver) -> None:
    endpoint, received = receiver
    # otlp_proto_http: no built-in of that name; OpenTelemetry's exporter
    # package registers it as an opentelemetry_metrics_exporter entry point.
    seen, _, _ = run_service(
        "own",
        OTEL_METRICS_EXPORTER="otlp_proto_http,prometheus",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )
    assert seen["scrape"]["code"] == 200
    assert received["/v1/metrics"]  # the push at shutdown


def test_otel_metrics_exporter_console_and_none() -> None:
    seen, stdout, _ = run_service("own", OTEL_METRICS_EXPORTER="console")
    assert '"name": "http.server.request.duration"' in stdout
    assert seen["scrape"]["code"] == 404
    seen, stdout, _ = run_service("own", OTEL_METRICS_EXPORTER="none")
    assert "http.server.request.duration" not in stdout
    assert seen["scrape"]["code"] == 404
    assert "OTEL_METRICS_EXPORTER" in seen["scrape"]["body"]


def test_otel_sdk_disabled_turns_every_signal_off(receiver) -> None:
    endpoint, received = receiver
    seen, stdout, _ = run_service(
        "own",
        OTEL_SDK_DISABLED="true",
        OTEL_LOGS_EXPORTER="otlp,console",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )
    assert seen["work"] == 200  # still served
    assert seen["spans"] == []
    assert seen["scrape"]["code"] == 404
    assert "OTEL_SDK_DISABLED" in seen["scrape"]["body"]
    assert received == {}
    assert "working on it" not in stdout


def test_without_otel_logs_exporter_no_record_is_exported(receiver) -> None:
    endpoint, received = receiver
    seen, _, stderr = run_service("own", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert seen["work"] == 200
    assert "/v1/logs" not in received
    assert re.search(r"WARNING:work:working on it", stderr)
