"""The benchmark's metrics variant runs end to end (tiny load): a smoke test."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_runs_with_metrics_on() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *("--rounds", "1", "--duration", "1", "--connections", "4"),
            *("--variants", "plain", "divak-0.1%+m", "--client", "python"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.startswith(("plain ", "divak-0.1%+m "))
    }
    assert set(rows) == {"plain", "divak-0.1%+m"}
    served = int(rows["divak-0.1%+m"][6].split("/")[1])
    assert served > 0 and rows["divak-0.1%+m"][7] == "0"  # served, no errors
