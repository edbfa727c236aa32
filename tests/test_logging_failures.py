"""Failing logging never hurts a request; it says so, rate-limited (issue 20, 4).

A log filter raises out of the logging call (the standard library does not
catch it); a formatter or a stream that raises goes to the handler's
``handleError``, which prints a traceback per record.  Each case, over real
sockets: the requests answer as they would have, and the failure is
reported in a bounded number of lines.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import signal
import threading
import typing

import pytest
from tornado import httpclient, web

import divak
from divak.logs.ratelimit import LOGGING_FAILURES
from tests.conftest import listen, run, start_service

SERVICE = ["-m", "tests.services.broken_logging"]
REQUESTS = 1000
REPORT = "--- Logging error: "


def _run_broken_service(how: str) -> tuple[dict[str, list[int]], list[str]]:
    """Serve REQUESTS greetings and the two error routes; return statuses and output."""
    process, port = start_service(
        SERVICE,
        env={
            "BROKEN_LOGGING": how,
            "OTEL_TRACES_EXPORTER": "none",
            "SHUTDOWN_LIMIT": "5",
        },
    )
    # Read the output as it comes: a full pipe would block the service.
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or ()))
    reader.start()
    statuses: dict[str, list[int]] = {"hello": [], "fail": [], "missing": []}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for index in range(REQUESTS):
            connection.request("GET", f"/hello/n{index}")
            response = connection.getresponse()
            response.read()
            statuses["hello"].append(response.status)
        for name in ("fail", "missing"):
            connection.request("GET", f"/hello/{name}")
            response = connection.getresponse()
            response.read()
            statuses[name].append(response.status)
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(30)
    lines = [line.rstrip("\n") for line in output]
    assert process.returncode == 0, lines[-30:]
    return statuses, lines


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("root-handler-filter", "RuntimeError: broken filter"),
        ("handler-logger-filter", "RuntimeError: broken filter"),
        ("formatter", "RuntimeError: broken formatter"),
    ],
)
def test_broken_logging_costs_no_request_and_few_lines(how: str, error: str) -> None:
    statuses, lines = _run_broken_service(how)
    # Every request answers as it would have with working logging.
    assert statuses == {"hello": [200] * REQUESTS, "fail": [500], "missing": [404]}
    reports = [line for line in lines if line.startswith(REPORT)]
    assert 1 <= len(reports) <= 2, lines[:20]
    assert error in reports[0]
    assert not [line for line in lines if "Traceback" in line], lines[:40]
    if how == "handler-logger-filter":
        # Only the handler's records are lost: the rest of the log is there.
        access = [line for line in lines if "access: 127.0.0.1 \"GET /hello/" in line]
        assert len(access) == REQUESTS + 2
        assert not [line for line in lines if "hello n" in line]
    else:
        # The one handler fails every record: the reports are all there is.
        assert lines == reports


class Greeter(
    divak.RequestTracker, divak.ErrorLogger, divak.Logger, web.RequestHandler
):
    def get(self) -> None:
        self.logger.info("greeting")
        self.write("hello")


class RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("broken filter on a handler of my own")


class GreeterApp(divak.Recorder, divak.Application):
    def __init__(self) -> None:
        super().__init__([(r"/", Greeter)])
        self.set_divak_service("greeter")


@pytest.fixture
def own_broken_handler() -> typing.Iterator[None]:
    """The application's own root handler (not divak's) with a raising filter."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.addFilter(RaisingFilter())
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_raising_filter_on_a_handler_of_the_application_costs_no_request(
    own_broken_handler: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    failures_before = LOGGING_FAILURES.count

    async def go() -> list[int]:
        app = GreeterApp()
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        codes = []
        for _ in range(20):
            responses = await asyncio.gather(
                *(
                    client.fetch(f"http://127.0.0.1:{port}/", raise_error=False)
                    for _ in range(10)
                )
            )
            codes.extend(response.code for response in responses)
        app._test_server.stop()
        return codes

    assert run(go()) == [200] * 200
    # Each request lost its handler's record (and its access line).
    assert LOGGING_FAILURES.count - failures_before >= 200
    reports = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith(REPORT)
    ]
    assert len(reports) <= 2  # none when an earlier test reported recently
