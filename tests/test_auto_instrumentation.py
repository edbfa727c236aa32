"""divak under ``opentelemetry-instrument``, run for real in a subprocess.

A team that already runs OpenTelemetry's auto-instrumentation (the
opentelemetry-distro configurator, the Tornado instrumentation) adds
divak: each request must still give exactly one span, divak's SERVER
span, each span must reach the collector once, and the console logs must
keep flowing with their ids.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from divak.testing import ZipkinCollector

from .conftest import ROOT, free_port, wait_for_port

INSTRUMENT = shutil.which(
    "opentelemetry-instrument", path=str(pathlib.Path(sys.executable).parent)
) or shutil.which("opentelemetry-instrument")


@pytest.fixture
def instrument() -> str:
    """The ``opentelemetry-instrument`` command, with what it needs here."""
    pytest.importorskip("opentelemetry.instrumentation.tornado")
    pytest.importorskip("opentelemetry.distro")  # the configurator the SDK needs
    pytest.importorskip("opentelemetry.exporter.zipkin.json")
    if INSTRUMENT is None:
        pytest.skip("opentelemetry-instrument is not installed")
    return INSTRUMENT


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine leaks into the service."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def serve_instrumented(
    instrument: str, collector: ZipkinCollector, **env: str
) -> tuple[str, list[dict], str]:
    """Run the service under opentelemetry-instrument, call /hello once, stop it.

    :returns: the response body, the spans the collector received, and the
        service's output
    """
    port = free_port()
    process = subprocess.Popen(
        [instrument, sys.executable, "tests/services/auto_instrumented.py"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PORT": str(port),
            "OTEL_SERVICE_NAME": "auto",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": collector.url + "/spans",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process)
        url = f"http://127.0.0.1:{port}/hello"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    # Both pipelines flush at exit: the SDK's provider (its exit hook) and
    # divak's span queues.  Three spans per call of /hello.
    spans = collector.wait_for(lambda s: len(s) >= 3)
    return body, spans, output


@pytest.mark.parametrize(
    "exporter",
    [
        # The SDK's configurator exports (OpenTelemetry's Zipkin exporter);
        # divak, joining that provider, must not export a second copy.
        "zipkin_json",
        # A name only divak knows: the configurator gives up, divak exports.
        "zipkin",
    ],
)
def test_one_span_per_request_each_delivered_once(
    instrument: str, collector: ZipkinCollector, exporter: str
) -> None:
    body, spans, output = serve_instrumented(
        instrument, collector, OTEL_TRACES_EXPORTER=exporter
    )
    # Nothing arrives after the three spans of /hello.
    assert len(spans) == len({span["id"] for span in spans}) == 3, spans
    names = sorted((span["name"].lower(), span.get("kind")) for span in spans)
    assert names == [
        ("get", "CLIENT"),
        ("get /downstream", "SERVER"),
        ("get /hello", "SERVER"),
    ], spans
    assert all(span["tags"]["otel.scope.name"] == "divak" for span in spans), spans
    assert {span["localEndpoint"]["serviceName"] for span in spans} == {"auto"}
    (hello,) = [s for s in spans if s["name"].lower() == "get /hello"]
    (client,) = [s for s in spans if s.get("kind") == "CLIENT"]
    (downstream,) = [s for s in spans if s["name"].lower() == "get /downstream"]
    assert "parentId" not in hello
    assert client["parentId"] == hello["id"]
    assert downstream["parentId"] == client["id"]
    # The downstream service got divak's CLIENT span as its parent.
    assert body.split()[1].split("-")[1:3] == [hello["traceId"], client["id"]], body
    if exporter == "zipkin_json":
        lines = output.splitlines()
        warnings = [line for line in lines if "divak turned it off" in line]
        assert len(warnings) == 1, output
        assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado" in warnings[0]


def test_the_tornado_instrumentation_left_out_changes_nothing(
    instrument: str, collector: ZipkinCollector
) -> None:
    _, spans, output = serve_instrumented(
        instrument,
        collector,
        OTEL_TRACES_EXPORTER="zipkin_json",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="tornado",
    )
    assert len(spans) == len({span["id"] for span in spans}) == 3, spans
    assert "divak turned it off" not in output


def test_logs_keep_flowing_with_ids_when_logging_is_auto_instrumented(
    instrument: str, collector: ZipkinCollector
) -> None:
    # The SDK then puts its LoggingHandler on the root logger; divak.run used
    # to see "a handler is configured" and left the console silent.  With
    # OTEL_LOGS_EXPORTER=console the SDK's exporter writes JSON to the same
    # output: the record reaches OpenTelemetry too.
    _, spans, output = serve_instrumented(
        instrument,
        collector,
        OTEL_TRACES_EXPORTER="zipkin_json",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        OTEL_LOGS_EXPORTER="console",
    )
    (hello,) = [s for s in spans if s["name"].lower() == "get /hello"]
    trace_id = hello["traceId"]
    lines = output.splitlines()
    assert any(
        "INFO" in line
        and "auto.hello: saying hello" in line
        and f"trace_id={trace_id}" in line
        for line in lines
    ), output
    assert any(
        '"GET /hello" 200' in line and f"trace_id={trace_id}" in line for line in lines
    ), output
    # Exported once by the SDK's log pipeline, with the same trace id.
    assert output.count('"body": "saying hello"') == 1, output
    assert f'"trace_id": "0x{trace_id}"' in output


_PROVIDER_IN_CODE = """
import asyncio, json, logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tornado import httpclient, web
import divak

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

class Hello(web.RequestHandler):
    def get(self):
        self.write("hello")

async def main():
    app = divak.Recorder([(r"/hello", Hello)])
    quiet = not app.divak_instrumentation.spans_go_to_log()
    server = app.listen(0, "127.0.0.1")
    port = next(iter(server._sockets.values())).getsockname()[1]
    await httpclient.AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/hello")
    app.divak_shutdown()
    print(json.dumps({
        "spans": [span.name for span in exporter.get_finished_spans()],
        "reporters": len(app.divak_span_queues),
        "quiet": quiet,
    }))

asyncio.run(main())
"""


def test_a_provider_set_in_code_exports_and_divak_adds_no_reporter() -> None:
    """OTEL_TRACES_EXPORTER is the provider owner's: no second copy, no warning."""
    result = subprocess.run(
        [sys.executable, "-c", _PROVIDER_IN_CODE],
        cwd=ROOT,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # divak built no ConsoleSpanExporter: nothing on standard output but
    # the script's own line; the user's exporter got the span, once.
    (line,) = result.stdout.strip().splitlines()
    seen = json.loads(line)
    assert seen == {"spans": ["GET /hello"], "reporters": 0, "quiet": True}
    assert "no reporter configured" not in result.stderr
    assert result.stderr.count("OTEL_TRACES_EXPORTER=console is honoured by") == 1
