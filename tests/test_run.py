"""divak.run() in real subprocesses, stopped with real signals."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import urllib.request

import pytest

from divak.runner import parse_bool
from divak.testing import ZipkinCollector

from .conftest import start_service
from .test_runner import Output
from .zipkin_schema import validate_spans


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_sigterm_lets_the_in_flight_request_finish(collector: ZipkinCollector) -> None:
    process, port = start_service(
        ["tests/services/slow_service.py"],
        {"OTEL_EXPORTER_ZIPKIN_ENDPOINT": collector.url + "/spans"},
    )
    lines = Output(process)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending = pool.submit(_get, f"http://127.0.0.1:{port}/slow?seconds=1.5")
        lines.wait_for("sleeping 1.5s")  # the request is in flight now
        process.send_signal(signal.SIGTERM)
        status, body = pending.result()
    assert status == 200 and b"slept" in body
    assert process.wait(timeout=30) == 0
    output = lines.text
    spans = collector.wait_for(
        lambda spans: any(s["name"] == "GET /slow" for s in spans), timeout=5
    )
    validate_spans(spans)
    slow = next(s for s in spans if s["name"] == "GET /slow")
    assert slow["localEndpoint"]["serviceName"] == "slow"
    assert any(s["name"] == "sleep" and s["parentId"] == slow["id"] for s in spans)
    # the default log format prints the trace id on every line of the request
    assert re.search(rf"GET /slow.*trace_id={slow['traceId']}", output), output


def test_two_services_drain_a_call_in_flight(collector: ZipkinCollector) -> None:
    """The frontend example calls a slow backend; both get SIGTERM meanwhile."""
    env = {"OTEL_EXPORTER_ZIPKIN_ENDPOINT": collector.url + "/spans"}
    backend, backend_port = start_service(
        ["tests/services/slow_service.py"], {**env, "GREETING_DELAY": "1.5"}
    )
    frontend, port = start_service(
        ["examples/frontend.py"],
        {**env, "BACKEND_URL": f"http://127.0.0.1:{backend_port}"},
    )
    backend_lines = Output(backend)
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending = pool.submit(_get, f"http://127.0.0.1:{port}/hello/eve")
        # the call reached the backend and waits there
        backend_lines.wait_for("greeting eve")
        frontend.send_signal(signal.SIGTERM)
        backend.send_signal(signal.SIGTERM)
        status, body = pending.result()
    assert status == 200 and b"Hello, eve!" in body
    assert frontend.wait(timeout=30) == 0 and backend.wait(timeout=30) == 0
    spans = collector.wait_for(
        lambda spans: (
            {"GET /hello/{name}", "GET /greeting/{name}"}
            <= {s["name"] for s in spans if s.get("kind") == "SERVER"}
        ),
        timeout=5,
    )
    validate_spans(spans)
    servers = [s for s in spans if s.get("kind") == "SERVER"]
    front = next(s for s in servers if s["name"] == "GET /hello/{name}")
    back = next(s for s in servers if s["name"] == "GET /greeting/{name}")
    client = next(s for s in spans if s["id"] == back["parentId"])
    assert client["kind"] == "CLIENT" and client["parentId"] == front["id"]
    assert {front["traceId"], back["traceId"]} == {client["traceId"]}
    assert back["localEndpoint"]["serviceName"] == "slow"
    assert front["localEndpoint"]["serviceName"] == "frontend"


def test_sigint_stops_an_idle_service() -> None:
    process, _ = start_service(["tests/services/slow_service.py"])
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def test_port_comes_from_the_environment() -> None:
    process, port = start_service(["tests/services/slow_service.py"])
    try:
        assert _get(f"http://127.0.0.1:{port}/status")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("0", False),
        ("FALSE", False),
        ("no", False),
        ("", False),
        (None, False),
    ],
)
def test_parse_bool(text, expected) -> None:
    assert parse_bool(text) is expected


def test_parse_bool_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="DEBUG"):
        parse_bool("maybe", "DEBUG")
