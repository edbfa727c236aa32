"""Forked services: children follow their parent, die and come back, clean up.

Real services forked by ``divak.run`` in subprocesses, real signals.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
import typing

import pytest

from tests.conftest import start_service
from tests.test_runner import Output

SERVICE = ["-m", "tests.services.lifecycle"]


def forked_service(
    env: dict[str, str],
) -> tuple[subprocess.Popen[str], int, Output, list[int]]:
    """The lifecycle service with two children; their pids from the log."""
    process, port = start_service(SERVICE, {"NUMBER_OF_PROCS": "2", **env})
    output = Output(process)
    output.wait_for("serving on port", count=2)
    output.wait_for("started 2 children:")
    match = re.search(r"started 2 children: (\d+) (\d+)", output.text)
    assert match, output.text
    return process, port, output, [int(pid) for pid in match.groups()]


def running(pid: int) -> bool:
    """Whether *pid* is a live (not zombie) process of the lifecycle service."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            ours = b"tests.services.lifecycle" in cmdline.read()
    except OSError:
        return False
    return ours and state not in ("Z", "X")


def wait_until(condition: typing.Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_all(*pids: int) -> None:
    for pid in pids:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def get(port: int, path: str) -> dict[str, typing.Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        assert response.status == 200
        return typing.cast(dict[str, typing.Any], json.loads(response.read()))
    finally:
        connection.close()


@pytest.fixture
def private_tmpdir(tmp_path: typing.Any) -> dict[str, str]:
    """TMPDIR for the services: the metrics directories they leave behind."""
    return {"TMPDIR": str(tmp_path)}


def metrics_directories(env: dict[str, str]) -> list[str]:
    return sorted(
        name for name in os.listdir(env["TMPDIR"]) if name.startswith("divak-metrics-")
    )


def test_children_stop_when_the_parent_is_killed(private_tmpdir) -> None:
    process, port, output, children = forked_service(private_tmpdir)
    try:
        assert all(running(pid) for pid in children)
        process.kill()
        process.wait(10)
        # Each child notices, drains as on SIGTERM and exits.
        assert wait_until(lambda: not any(running(pid) for pid in children)), [
            pid for pid in children if running(pid)
        ]
    finally:
        kill_all(*children)


def test_a_start_removes_what_a_killed_run_left(private_tmpdir) -> None:
    process, port, output, children = forked_service(private_tmpdir)
    directory = get(port, "/env/DIVAK_METRICS_PEERS_DIR")["value"]
    assert os.path.basename(directory) in metrics_directories(private_tmpdir)
    # The whole run is killed (the OOM killer takes the container): nothing
    # could clean up.
    kill_all(process.pid, *children)
    process.wait(10)
    assert wait_until(lambda: not any(running(pid) for pid in children))
    assert metrics_directories(private_tmpdir) == [os.path.basename(directory)]

    again, port, output, children = forked_service(private_tmpdir)
    try:
        current = get(port, "/env/DIVAK_METRICS_PEERS_DIR")["value"]
        # The stale directory is gone, the live run's own is kept.
        assert metrics_directories(private_tmpdir) == [os.path.basename(current)]
        assert current != directory
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0, output.text
    finally:
        kill_all(again.pid, *children)
    assert metrics_directories(private_tmpdir) == []


def test_a_killed_child_is_restarted() -> None:
    process, port, output, children = forked_service({})
    try:
        killed, survivor = children
        os.kill(killed, signal.SIGKILL)
        output.wait_for(f"child {killed} was killed by SIGKILL, restarted as")
        output.wait_for("serving on port", count=3)
        match = re.search(rf"child {killed} .* restarted as (\d+)", output.text)
        assert match, output.text
        new = int(match.group(1))
        assert "restart 1 of at most 100" in output.text
        # Both the survivor and the new child serve; the service never stopped.
        seen: set[int] = set()
        for _ in range(200):
            seen.add(get(port, "/block?delay=0.02")["pid"])
            if seen == {survivor, new}:
                break
        assert seen == {survivor, new}, (seen, survivor, new)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, output.text
        assert output.text.count("stopped after") == 2
    finally:
        kill_all(process.pid, *children)


def test_restarts_stop_at_max_restarts() -> None:
    process, port, output, children = forked_service({"MAX_RESTARTS": "1"})
    new = 0
    try:
        os.kill(children[0], signal.SIGKILL)
        output.wait_for("restart 1 of at most 1")
        match = re.search(r"restarted as (\d+)", output.text)
        assert match, output.text
        new = int(match.group(1))
        os.kill(new, signal.SIGKILL)
        # The second death is one too many: the parent stops the service.
        assert process.wait(30) == 1, output.text
        assert f"child {new} was killed by SIGKILL after 1 restart(s)" in output.text
        assert wait_until(lambda: not running(children[1]))
    finally:
        kill_all(process.pid, *children, *([new] if new else []))
