"""Every example runs: the demo prints joined two-service traces."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import typing

from .conftest import ROOT, start_service
from .test_runner import Output


def test_demo_prints_joined_traces() -> None:
    result = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("== ") == 6  # four requests, the metrics, the debug pages
    # every trace joins both services: frontend SERVER > CLIENT > backend SERVER
    trees = re.findall(
        r"frontend +SERVER +GET /hello/\{name\}.*\n +frontend +CLIENT +GET .*\n"
        r" +backend +SERVER +GET /greeting/\{name\}",
        out,
    )
    assert len(trees) == 4, out
    assert "trace 4bf92f3577b34da6a3ce929d0e0e4736" in out  # the W3C parent's trace
    # the scrapes count the four requests per route, in both services
    assert re.search(r"frontend .*http_route=\"/hello/\{name\}\".* 4\.0", out), out
    assert re.search(r"backend .*http_route=\"/greeting/\{name\}\".* 4\.0", out), out
    assert "trace 80f198ee56343ba864fe8b2a57d3eff7" in out  # the B3 parent's trace
    assert "request_id=demo-req-42" in out
    # the debug pages' URLs, and what they counted per route
    assert re.search(r"frontend +http://127\.0\.0\.1:\d+/divak\n", out), out
    assert re.search(r"frontend +GET /hello/\{name\} +4 requests", out), out
    assert re.search(r"backend +GET /greeting/\{name\} +4 requests", out), out
    assert "services exited with [0, 0] after SIGTERM" in out


def _request(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], typing.Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_sprockets_http_port() -> None:
    """A sprockets.http service with only its imports changed."""
    database = socket.socket()
    database.bind(("127.0.0.1", 0))  # bound, not listening: refused for now
    process, port = start_service(
        ["examples/sprockets_port.py"],
        {"DATABASE_PORT": str(database.getsockname()[1])},
    )
    output = Output(process)
    try:
        output.wait_for("connecting to the database")
        assert _request(port, "/status")[::2] == (503, {"status": "connecting"})
        database.listen()
        output.wait_for("database connected")
        assert _request(port, "/status")[::2] == (200, {"status": "ok"})

        status, headers, body = _request(port, "/greeting/ann")
        assert (status, body) == (200, {"greeting": "Hello, ann!"})
        assert headers["Server"] == "greeter/1.0.0"
        status, _, body = _request(port, "/greeting/nobody")
        assert status == 404 and body["message"] == "HTTP 404: Unknown Name"
        status, _, body = _request(port, "/no/such/route")  # JSON, not HTML
        assert status == 404 and body["message"] == "HTTP 404: Not Found"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        database.close()
    assert code == 0, output.text
    assert "greeting ann" in output.text
    assert "no greeting for nobody" in output.text
    assert "database connection closed" in output.text


def test_divak_tornado_port() -> None:
    """divak-tornado 0.0.3 classes, imported from divak.api."""
    process, port = start_service(["examples/divak_tornado_port.py"])
    output = Output(process)
    try:
        status, headers, body = _request(port, "/status", {"Request-Id": "port-req-7"})
        assert status == 200 and body["status"] == "ok"
        assert headers["Request-Id"] == "port-req-7"
        output.wait_for("status requested {port-req-7}")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, output.text
    assert "Traceback" not in output.text


def test_the_readme_example_serves() -> None:
    """The application of README.rst, as written, answers over a real socket."""
    import asyncio

    from tornado import httpclient

    from .conftest import listen

    text = (ROOT / "README.rst").read_text()
    block = text.split(".. code-block:: python\n", 1)[1].split("\nWhat you get", 1)[0]
    code = "\n".join(line[3:] for line in block.splitlines())
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.rst", "exec"), namespace)  # noqa: S102
    app = namespace["Application"]()

    async def go() -> tuple[int, str, int]:
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        missing = await client.fetch(f"http://127.0.0.1:{port}/nope", raise_error=False)
        scrape = await client.fetch(f"http://127.0.0.1:{port}/metrics")
        return scrape.code, scrape.body.decode(), missing.code

    try:
        code_, body, missing = asyncio.run(go())
    finally:
        app.divak_shutdown()
    assert missing == 404
    assert code_ == 200
    assert re.search(
        r"http_server_request_duration_seconds_count\{[^}]*"
        r'http_response_status_code="404"[^}]*\} 1\.0',
        body,
    ), body
