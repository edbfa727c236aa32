"""The benchmark runs end to end (tiny load, Python client): a smoke test."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

VARIANTS = ["plain", "divak", "divak-0.1%+m", "otel-0.1%+m"]


def test_benchmark_runs_and_counts_spans(tmp_path: pathlib.Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--rounds", "1",
            "--duration", "1",
            "--connections", "4",
            "--variants", *VARIANTS,
            "--client", "python",
            "--json", str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("variant "))
    columns = header.split("  ")
    columns = [c.strip() for c in columns if c.strip()]
    rows = {
        line.split()[0]: dict(zip(columns, line.split(), strict=True))
        for line in lines
        if line.split() and line.split()[0] in VARIANTS
    }
    assert set(rows) == set(VARIANTS)
    plain, divak = rows["plain"], rows["divak"]
    assert plain["ratio"] == "1.00" and plain["Δ µs"] == "+0"
    spans, served = divak["spans/served"].split("/")
    assert int(served) > 0 and spans == served  # no span lost, collector up
    assert plain["spans/served"].startswith("0/")
    for row in rows.values():
        assert row["errors"] == "0"
        assert float(row["CPU µs/req"]) > 0  # the server's own CPU time
        assert float(row["p99/p50"]) >= 1
    assert "load average" in result.stdout

    # With metrics on, every request answered was counted, by divak and by
    # OpenTelemetry's instrumentation (its MeterProvider is really set).
    results = json.loads(figures.read_text())["results"]
    for variant in ("divak-0.1%+m", "otel-0.1%+m"):
        [run] = results[variant]
        assert run["served"] > 0 and run["metered"] == run["served"], run
    assert "metered" not in results["divak"][0]
