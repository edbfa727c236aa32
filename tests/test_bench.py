"""The benchmark runs end to end (tiny load, Python client): a smoke test."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_runs_and_counts_spans():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--rounds", "1",
            "--duration", "1",
            "--connections", "4",
            "--variants", "plain", "divak", "divak-0.1%+m",
            "--client", "python",
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
        if line.startswith(("plain ", "divak ", "divak-0.1%+m "))
    }
    assert set(rows) == {"plain", "divak", "divak-0.1%+m"}
    plain, divak = rows["plain"], rows["divak"]
    assert plain[2] == "1.00"
    spans, served = divak[6].split("/")
    assert int(served) > 0 and spans == served  # no span lost, collector up
    assert plain[6].startswith("0/") and plain[7] == "0" and divak[7] == "0"
    metered = rows["divak-0.1%+m"]  # metrics on: served, no errors
    assert int(metered[6].split("/")[1]) > 0 and metered[7] == "0"
