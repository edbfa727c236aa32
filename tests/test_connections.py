"""Clients that never finish their headers cannot take a service down.

Real services in subprocesses started with a low soft limit of open files,
real sockets: more connections sending partial headers than the limit
allows, and a fresh client still gets its answer.
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, wait_for_port
from tests.test_runner import Output

SOFT_LIMIT = 256
#: more slow connections than the soft limit allows descriptors
SLOW_CONNECTIONS = 320

_LIMITED = (
    "import resource, runpy\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
    "runpy.run_module('tests.services.lifecycle', run_name='__main__')\n"
)


def limited_service(
    soft: int, hard: int, env: dict[str, str]
) -> tuple[subprocess.Popen[str], int, Output]:
    """The lifecycle service, started with *soft*/*hard* RLIMIT_NOFILE."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _LIMITED.format(soft=soft, hard=hard)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PORT": str(port),
            "ADDRESS": "127.0.0.1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    wait_for_port(port, process)
    return process, port, output


def open_slow_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that send the start of a request's headers, never the end."""
    slow = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: test\r\nX-Slow: 1\r\n")
        slow.append(sock)
    return slow


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes *sock* before *deadline* (monotonic)."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("scenario", ["soft limit raised", "hard limit reached"])
def test_slow_headers_do_not_lock_out_a_fresh_client(scenario: str) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * SLOW_CONNECTIONS:
        pytest.skip(f"the hard limit of open files ({hard}) is too low")
    capped = scenario == "hard limit reached"
    process, port, output = limited_service(
        SOFT_LIMIT, SOFT_LIMIT if capped else hard, {"HEADER_TIMEOUT": "3"}
    )
    slow: list[socket.socket] = []
    try:
        slow = open_slow_connections(port, SLOW_CONNECTIONS)
        # A fresh client is answered: at once when the service could raise
        # its limit, once the header deadline freed descriptors otherwise.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/status", timeout=30
        ) as response:
            assert response.status == 200
        # The header deadline closes every slow connection.
        deadline = time.monotonic() + 30
        still_open = [s for s in slow if not closed_by_server(s, deadline)]
        assert not still_open, f"{len(still_open)} slow connection(s) still open"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.text
    finally:
        for sock in slow:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.text
    lines = text.splitlines()
    # A few lines, not one traceback per failed accept.
    assert len(lines) < 40, f"{len(lines)} lines:\n" + "\n".join(lines[:60])
    assert "Traceback" not in text, text[:5000]
    assert "whose request headers did not arrive within 3s" in text, text
    if capped:
        assert 1 <= text.count("accept(s) failed: Too many open files") <= 3, text
    else:
        assert f"raised the open files limit from {SOFT_LIMIT} to " in text
        assert "accept(s) failed" not in text, text


def test_headers_trickled_byte_by_byte_are_cut_at_the_deadline() -> None:
    """A kept-alive idle connection stays; a request trickling in does not."""
    process, port, output = limited_service(
        *resource.getrlimit(resource.RLIMIT_NOFILE), {"HEADER_TIMEOUT": "1"}
    )
    try:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        kept.request("GET", "/status")
        first = kept.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        # Idle longer than the header deadline: idle is not late.
        time.sleep(2.5)
        kept.request("GET", "/status")
        assert kept.getresponse().status == 200
        # Its next request's headers, one byte every 0.2 s: each byte
        # arrives long before any idle timeout would notice.
        assert kept.sock is not None
        trickled = kept.sock
        started = time.monotonic()
        request = b"GET /status HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"x" * 500
        closed = False
        for byte in request:
            if time.monotonic() - started > 30:
                break
            try:
                trickled.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_by_server(trickled, time.monotonic() + 0.2):
                closed = True
                break
        elapsed = time.monotonic() - started
        assert closed, "the trickling request was never cut off"
        assert elapsed >= 1.0  # not before its deadline
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "1 connection(s) whose request headers did not arrive" in output.text
