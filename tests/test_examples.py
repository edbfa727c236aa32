"""Every example runs: the demo prints joined two-service traces."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT


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
    assert out.count("== ") == 4
    # every trace joins both services: frontend SERVER > CLIENT > backend SERVER
    trees = re.findall(
        r"frontend +SERVER +GET /hello/\{name\}.*\n +frontend +CLIENT +GET .*\n"
        r" +backend +SERVER +GET /greeting/\{name\}",
        out,
    )
    assert len(trees) == 4, out
    assert "trace 4bf92f3577b34da6a3ce929d0e0e4736" in out  # the W3C parent's trace
    assert "trace 80f198ee56343ba864fe8b2a57d3eff7" in out  # the B3 parent's trace
    assert "request_id=demo-req-42" in out
    assert "services exited with [0, 0] after SIGTERM" in out
