"""Start the frontend and backend services, trace a few requests, show the traces.

Usage: ``python examples/demo.py``

Both services run as their own processes with :func:`divak.run`.  The demo
receives their spans on a Zipkin v2 endpoint of its own, prints each trace
as an indented tree (service, span name, duration) followed by the log
lines of both services that carry its trace id, then stops the services
with SIGTERM.  With ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` set, the services
also report to that Zipkin.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict

from divak.testing import ZipkinCollector

HERE = os.path.dirname(os.path.abspath(__file__))

REQUESTS = [
    ("a plain request", "/hello/alice", {}),
    (
        "a request carrying a W3C traceparent",
        "/hello/bob",
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    ),
    (
        "a request carrying B3 headers",
        "/hello/carol",
        {
            "X-B3-TraceId": "80f198ee56343ba864fe8b2a57d3eff7",
            "X-B3-SpanId": "e457b5a2e4d86bd1",
            "X-B3-Sampled": "1",
        },
    ),
    ("a request carrying a Request-Id", "/hello/dave", {"Request-Id": "demo-req-42"}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(script: str, port: int, env: dict[str, str]) -> tuple[subprocess.Popen, list]:
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, script)],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


def wait_ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


METRIC_LINES = (
    "http_server_request_duration_seconds_count",
    "http_client_request_duration_seconds_count",
    "divak_operation_duration_seconds_count",
)


def scrape(port: int, service: str) -> list[str]:
    """The count lines of the service's ``/metrics`` (Prometheus text format)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return [
        f"{service:<9} {line}"
        for line in text.splitlines()
        if line.startswith(METRIC_LINES) and "/status" not in line
    ]


def debug_page(port: int, service: str) -> list[str]:
    """The page's URL, then a line per route from its JSON view."""
    url = f"http://127.0.0.1:{port}/divak"
    with urllib.request.urlopen(f"{url}?format=json", timeout=10) as response:
        data = json.loads(response.read())
    lines = [f"{service:<9} {url}"]
    for route in data["routes"]:
        window = route["windows"]["1m"]
        lines.append(
            f"{service:<9}   {route['name']:<24} {window['requests']} requests,"
            f" p50 {window['p50'] * 1000:.1f} ms"
        )
    return lines


def _housekeeping(span: dict) -> bool:
    """A span of the readiness checks and scrapes, not of the demo's requests."""
    return span.get("tags", {}).get("url.path") in ("/status", "/metrics", "/divak")


def print_tree(spans: list[dict]) -> None:
    children = defaultdict(list)
    ids = {span["id"] for span in spans}
    for span in spans:
        parent = span.get("parentId")
        children[parent if parent in ids else None].append(span)

    def show(span: dict, depth: int) -> None:
        service = span.get("localEndpoint", {}).get("serviceName", "?")
        kind = span.get("kind", "INTERNAL")
        print(
            f"  {'  ' * depth}{service:<9} {kind:<8} {span['name']:<24}"
            f" {span.get('duration', 0) / 1000:8.2f} ms"
        )
        for child in sorted(children[span["id"]], key=lambda s: s["timestamp"]):
            show(child, depth + 1)

    for root in sorted(children[None], key=lambda s: s["timestamp"]):
        show(root, 0)


def main() -> int:
    with ZipkinCollector() as collector:
        env = {
            "DEMO_COLLECTOR_URL": collector.url,
            "PYTHONUNBUFFERED": "1",
            "DIVAK_DEBUG_PAGE": "/divak",  # the live debug page, loopback only
        }
        backend_port, frontend_port = free_port(), free_port()
        backend, backend_log = start("backend.py", backend_port, env)
        frontend, frontend_log = start(
            "frontend.py",
            frontend_port,
            {**env, "BACKEND_URL": f"http://127.0.0.1:{backend_port}"},
        )
        try:
            wait_ready(backend_port)
            wait_ready(frontend_port)
            answers = []
            for title, path, headers in REQUESTS:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{frontend_port}{path}", headers=headers
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers.append((title, path, response.status, response.read()))
            scrapes = [
                scrape(frontend_port, "frontend"),
                scrape(backend_port, "backend"),
            ]
            pages = [
                debug_page(frontend_port, "frontend"),
                debug_page(backend_port, "backend"),
            ]
        finally:
            for process in (frontend, backend):
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(timeout=30) for process in (frontend, backend)]
        # every /hello request gives 2 SERVER + 1 CLIENT + 2 INTERNAL spans
        expected = 5 * len(REQUESTS)
        spans = collector.wait_for(
            lambda spans: (
                sum(not _housekeeping(s) for s in spans) >= expected
            ),
            timeout=15,
        )
    spans = [s for s in spans if not _housekeeping(s)]
    traces: dict[str, list[dict]] = defaultdict(list)
    for span in spans:
        traces[span["traceId"]].append(span)
    logs = backend_log + frontend_log
    ordered = sorted(traces, key=lambda t: min(s["timestamp"] for s in traces[t]))
    for (title, path, status, body), trace_id in zip(answers, ordered, strict=True):
        print(f"== {title}: GET {path} -> {status} {body.decode()}")
        print(f"   trace {trace_id}")
        print_tree(traces[trace_id])
        print("   log lines with this trace id:")
        for line in sorted(logs):  # lines start with their time
            if trace_id in line:
                print("    " + line.rstrip())
        print()
    print("== metrics (Prometheus scrapes of /metrics), request counts by route:")
    for lines in scrapes:
        for line in lines:
            print("   " + line)
    print()
    print("== debug pages (open them while the services run), routes by p50:")
    for lines in pages:
        for line in lines:
            print("   " + line)
    print()
    print(f"services exited with {codes} after SIGTERM")
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
