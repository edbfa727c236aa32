"""divak.run in real subprocesses: start-up, graceful drain, signals, forking."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing

import pytest
from tornado import web

import divak
from divak.lifecycle.server import bind_sockets
from tests.conftest import ROOT, free_port, run, start_service
from tests.zipkin_schema import validate_spans

SERVICE = ["-m", "tests.services.lifecycle"]


class Output:
    """Collects a subprocess's output lines in a thread (the pipe never fills)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,))
        self._thread.daemon = True
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{text!r} not logged:\n{self.text}")
                self._changed.wait(remaining)

    @property
    def text(self) -> str:
        self._thread.join(0.5)
        return "".join(self.lines)


def service(
    env: dict[str, str] | None = None, args: list[str] | None = None
) -> tuple[subprocess.Popen[str], int, Output]:
    process, port = start_service(
        args or SERVICE, env={"SHUTDOWN_LIMIT": "5", **(env or {})}
    )
    return process, port, Output(process)


def stop(process: subprocess.Popen[str], timeout: float = 20.0) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def send_request(port: int, path: str) -> socket.socket:
    """Open a connection and send a GET for *path*; return the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


class _Unclosable(io.BytesIO):
    def close(self) -> None:  # http.client closes it after each response
        pass


class _Received:
    def __init__(self, data: bytes) -> None:
        self.buffer = _Unclosable(data)

    def makefile(self, *args: typing.Any, **kwargs: typing.Any) -> io.BytesIO:
        return self.buffer


def read_responses(sock: socket.socket) -> list[http.client.HTTPResponse]:
    """Read everything until the server closes *sock*; parse the responses."""
    chunks = []
    with sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    received = _Received(data)
    responses = []
    while received.buffer.tell() < len(data):
        response = http.client.HTTPResponse(received)  # type: ignore[arg-type]
        response.begin()
        response.body = response.read()  # type: ignore[attr-defined]
        responses.append(response)
    return responses


def test_sigterm_drains_requests_in_flight(collector: typing.Any) -> None:
    process, port, output = service({"COLLECTOR_URL": collector.url})
    slow = [send_request(port, "/slow?delay=1.5") for _ in range(20)]
    # A /status request pipelined behind a slow one arrives before SIGTERM
    # but is read during the drain.
    pipelined = socket.create_connection(("127.0.0.1", port), timeout=30)
    pipelined.sendall(
        b"GET /slow?delay=1.5 HTTP/1.1\r\nHost: test\r\n\r\n"
        b"GET /status HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    output.wait_for("slow request started", count=21)
    process.send_signal(signal.SIGTERM)
    output.wait_for("draining: not accepting")

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)

    with concurrent.futures.ThreadPoolExecutor(21) as pool:
        results = list(pool.map(read_responses, [*slow, pipelined]))
    assert process.wait(20) == 0, output.text

    for responses in results[:20]:
        assert [r.status for r in responses] == [200]
        assert responses[0].getheader("Connection") == "close"
    first, status = results[20]
    assert first.status == 200
    assert status.status == 503
    assert status.getheader("Retry-After")
    assert json.loads(status.body) == {"status": "draining"}  # type: ignore[attr-defined]

    spans = collector.wait_for(
        lambda spans: sum(s["name"] == "GET /slow" for s in spans) == 21
    )
    validate_spans(spans)
    assert any(
        s.get("tags", {}).get("http.response.status_code") == "503" for s in spans
    )


def test_idle_keep_alive_connection_does_not_delay_exit() -> None:
    process, port, output = service({"SHUTDOWN_LIMIT": "30"})
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    idle.request("GET", "/status")
    response = idle.getresponse()
    response.read()
    assert response.status == 200
    assert not response.will_close
    # Exits long before the 30 s shutdown limit.
    assert stop(process, timeout=10) == 0, output.text
    assert idle.sock is not None
    assert idle.sock.recv(1) == b""  # the server closed the idle connection


def test_shutdown_callback_that_never_finishes_is_cut_off() -> None:
    process, port, output = service({"HANG_ON_SHUTDOWN": "1", "SHUTDOWN_LIMIT": "0.5"})
    assert stop(process) == 0, output.text
    assert "shutdown callback hangs" in output.text
    assert "did not finish within 0.5s" in output.text


def test_second_signal_forces_exit() -> None:
    process, port, output = service({"SHUTDOWN_LIMIT": "60"})
    pending = send_request(port, "/slow?delay=60")
    output.wait_for("slow request started")
    process.send_signal(signal.SIGTERM)
    output.wait_for("draining: not accepting")
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 1
    assert "second SIGINT, exiting now" in output.text
    pending.close()


def test_before_run_failure_exits_non_zero() -> None:
    result = subprocess.run(
        [sys.executable, *SERVICE],
        cwd=ROOT,
        env={**os.environ, "FAIL_BEFORE_RUN": "1", "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 70
    assert "RuntimeError: database unreachable" in result.stdout
    assert "application failed to start" in result.stdout


def test_debug_true_from_environment() -> None:
    process, port, output = service({"DEBUG": "true"})
    output.wait_for("debug logging is on")
    assert stop(process) == 0, output.text


def test_json_log_format() -> None:
    process, port, output = service({"LOG_FORMAT": "json"})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/slow?delay=0", headers={"Request-Id": "abc"})
    connection.getresponse().read()
    connection.close()
    assert stop(process) == 0, output.text
    records = [json.loads(line) for line in output.text.splitlines()]
    access = [r for r in records if r["logger"] == "tornado.access"]
    assert access and access[-1]["level"] == "INFO"
    assert len(access[-1]["otelTraceID"]) == 32
    assert {"time", "message", "divak_request_id"} <= access[-1].keys()


def test_restart_on_the_same_port_right_after_stop() -> None:
    process, port, output = service()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/status")
    connection.getresponse().read()
    assert stop(process) == 0, output.text
    again, _ = start_service(SERVICE, port=port)  # no "Address already in use"
    assert stop(again) == 0


def test_number_of_procs_2_forks_after_binding(collector: typing.Any) -> None:
    process, port, output = service(
        {"NUMBER_OF_PROCS": "2", "COLLECTOR_URL": collector.url}
    )
    output.wait_for("serving on port", count=2)

    def blocking_request(_: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/block?delay=0.05")
        body = json.loads(connection.getresponse().read())
        connection.close()
        return int(body["pid"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        pids = set(pool.map(blocking_request, range(40)))
    assert len(pids) == 2 and process.pid not in pids

    assert stop(process) == 0, output.text
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_free(pid)
    assert output.text.count("stopped after") == 2
    spans = collector.wait_for(
        lambda spans: (
            {
                s.get("tags", {}).get("process.pid")
                for s in spans
                if s["name"] == "GET /block"
            }
            >= {str(pid) for pid in pids}
        )
    )
    validate_spans(spans)


def _is_zombie_free(pid: int) -> bool:
    # The pid may already be reused by an unrelated process; ours is gone.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"tests.services.lifecycle" not in cmdline.read()
    except OSError:
        return True


def test_child_start_failure_stops_the_parent() -> None:
    result = subprocess.run(
        [sys.executable, *SERVICE],
        cwd=ROOT,
        env={
            **os.environ,
            "FAIL_BEFORE_RUN": "1",
            "NUMBER_OF_PROCS": "2",
            "PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 70, result.stdout
    assert "exited with status 70" in result.stdout


def test_second_signal_to_the_parent_forces_the_children_out() -> None:
    process, port, output = service({"NUMBER_OF_PROCS": "2", "SHUTDOWN_LIMIT": "60"})
    output.wait_for("serving on port", count=2)
    pending = send_request(port, "/slow?delay=60")
    output.wait_for("slow request started")
    process.send_signal(signal.SIGTERM)
    output.wait_for("draining: not accepting", count=2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 1, output.text
    assert "second SIGTERM, exiting now" in output.text
    pending.close()


def test_a_collector_that_hangs_does_not_delay_exit() -> None:
    # A collector that accepts connections (in the kernel) but never answers.
    with socket.create_server(("127.0.0.1", 0)) as hanging:
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/api/v2"
        process, port, output = service({"COLLECTOR_URL": url, "SHUTDOWN_LIMIT": "0.5"})
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/slow?delay=0")
        assert connection.getresponse().status == 200
        connection.close()
        # The reporter waits 5 s for each upload; the exit does not.
        assert stop(process, timeout=4) == 0, output.text
    assert "spans not flushed within 0.5s" in output.text


def test_a_collector_that_is_down_does_not_delay_exit() -> None:
    # Nothing listens there: uploads fail at once, and at shutdown they are
    # tried once, not retried for the whole shutdown limit.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/api/v2"
    process, port, output = service({"COLLECTOR_URL": url, "SHUTDOWN_LIMIT": "30"})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/slow?delay=0")
    assert connection.getresponse().status == 200
    connection.close()
    # Retrying would take the reporter's 10 s retry window.
    assert stop(process, timeout=6) == 0, output.text
    assert "spans not flushed" not in output.text


READINESS = ["-m", "tests.services.readiness"]


def status_of(port: int, path: str = "/status") -> tuple[int, dict[str, typing.Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("setting", [None, "1", "0"])
def test_a_ready_service_froze_its_start_up_objects(setting: str | None) -> None:
    """Full collections skip what start-up made, unless gc_freeze is off.

    A full collection walks every object the collector tracks: with the
    modules, classes and application frozen it walks far fewer, so its
    pause (the service's tail latency) is shorter.
    """
    process, port, output = service({"GC_FREEZE": setting} if setting else {})
    try:
        deadline = time.monotonic() + 30
        while status_of(port)[0] != 200:  # ready: the on_start callbacks ran
            assert time.monotonic() < deadline, output.text
            time.sleep(0.05)
        code, figures = status_of(port, "/gc")
        assert code == 200
        if setting == "0":
            assert figures["frozen"] == 0
            assert figures["tracked"] > 20_000  # divak, Tornado, OpenTelemetry...
        else:
            assert figures["frozen"] > 20_000
            assert figures["tracked"] < figures["frozen"] / 4
    finally:
        assert stop(process) == 0, output.text


@pytest.mark.parametrize("own_event", ["1", "0"])
def test_not_ready_until_the_start_callbacks_say_so(own_event: str) -> None:
    """sprockets.http's pattern: 503 until the database is connected."""
    database = socket.socket()
    database.bind(("127.0.0.1", 0))
    db_port = database.getsockname()[1]  # bound, not listening: refused
    process, port = start_service(
        READINESS, {"DB_PORT": str(db_port), "OWN_EVENT": own_event}
    )
    output = Output(process)
    try:
        output.wait_for("connecting to the database")
        assert status_of(port) == (503, {"status": "starting"})
        assert status_of(port, "/warm") == (200, {"warm": True})
        database.listen()  # the database is up now
        output.wait_for("database connected")
        deadline = time.monotonic() + 30
        while status_of(port)[0] != 200:
            assert time.monotonic() < deadline, output.text
            time.sleep(0.05)
        assert status_of(port) == (200, {"status": "ok"})
    finally:
        database.close()
        assert stop(process) == 0, output.text


def test_coroutine_before_run_failure_exits_non_zero() -> None:
    result = subprocess.run(
        [sys.executable, *READINESS],
        cwd=ROOT,
        env={
            **os.environ,
            "FAIL_BEFORE_RUN": "1",
            "DB_PORT": "9",
            "PORT": str(free_port()),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 70, result.stdout + result.stderr
    assert "RuntimeError: cache unreachable" in result.stdout
    assert "was never awaited" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": "http"}, "PORT must be an integer, not 'http'"),
        ({"SHUTDOWN_LIMIT": "soon"}, "settings['shutdown_limit'] must be a number"),
        ({"HEADER_TIMEOUT": "soon"}, "HEADER_TIMEOUT must be a number, not 'soon'"),
    ],
)
def test_a_malformed_number_names_its_variable(
    env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _RUN_WITH_SETTINGS],
        cwd=ROOT,
        env={**os.environ, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# The lifecycle service reads SHUTDOWN_LIMIT with float(); this one hands
# the raw text to divak.run as the setting.
_RUN_WITH_SETTINGS = """
import os, divak
from tests.services.lifecycle import make_app
settings = {}
if os.environ.get("SHUTDOWN_LIMIT"):
    settings["shutdown_limit"] = os.environ["SHUTDOWN_LIMIT"]
divak.run(make_app, settings)
"""


def test_address_binds_only_there_and_the_port_is_logged_once() -> None:
    process, port = start_service(SERVICE, {"ADDRESS": "127.0.0.1"})
    output = Output(process)
    try:
        assert status_of(port)[0] == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        assert stop(process) == 0, output.text
    assert f"serving on 127.0.0.1:{port} (pid" in output.text, output.text
    assert f"{port},{port}" not in output.text


def test_all_interfaces_log_each_port_once() -> None:
    process, port, output = service()
    assert stop(process) == 0, output.text
    assert f"serving on port {port} (pid" in output.text, output.text


def test_requests_still_running_at_the_shutdown_limit_are_cut_off() -> None:
    process, port, output = service({"SHUTDOWN_LIMIT": "1"})
    pending = send_request(port, "/slow?delay=60")
    output.wait_for("slow request started")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0, output.text
    assert pending.recv(1) == b""  # closed without an answer
    pending.close()
    text = output.text
    assert (
        "shutdown_limit of 1.0s passed with 1 request(s) in flight: "
        "cutting them off (GET /slow)" in text
    ), text
    assert re.search(r"stopped after [\d.]+s, 1 request\(s\) cut off by shutdown", text)


def test_the_runner_knows_which_requests_it_cut_off() -> None:
    started = asyncio.Event()

    class Hanging(web.RequestHandler):
        async def get(self) -> None:
            started.set()
            await asyncio.sleep(60)

    class Quick(web.RequestHandler):
        def get(self) -> None:
            self.write("quick")

    app = divak.Application(
        [(r"/hang", Hanging), (r"/quick", Quick)], shutdown_limit=0.5
    )
    runner = divak.Runner(app)
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]

    async def scenario() -> bytes:
        serving = asyncio.ensure_future(runner.serve(sockets))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang?token=s3cret HTTP/1.1\r\nHost: test\r\n\r\n")
        await asyncio.wait_for(started.wait(), 10)
        runner.stop_server()
        await asyncio.wait_for(serving, 10)
        answer = await reader.read()
        writer.close()
        return answer

    assert run(scenario()) == b""
    [request] = runner.cut_off
    assert request.method == "GET" and request.path == "/hang"
