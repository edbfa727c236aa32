"""What ``import divak`` loads: nothing that only exporting needs.

The cost of the import is measured, not tested (``docs/performance.rst``).
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def modules_after(code: str, names: list[str]) -> list[bool]:
    """Run *code* in a fresh interpreter; which of *names* it imported."""
    check = f"{code}; import sys; print(*[n in sys.modules for n in {names!r}])"
    output = subprocess.run(
        [sys.executable, "-c", check],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [word == "True" for word in output.split()]


def test_import_divak_does_not_import_requests() -> None:
    assert modules_after("import divak", ["requests"]) == [False]


def test_import_divak_does_not_import_the_exporter_packages() -> None:
    assert modules_after(
        "import divak",
        [
            "opentelemetry.exporter.zipkin.json",
            "opentelemetry.exporter.otlp.proto.http",
            "urllib3",
        ],
    ) == [False, False, False]


def test_exporting_to_zipkin_does_not_import_requests() -> None:
    code = (
        "import divak\n"
        "from divak.testing import ZipkinCollector\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "with ZipkinCollector() as collector:\n"
        "    provider = TracerProvider()\n"
        "    reporter = divak.ZipkinReporter(collector.url)\n"
        "    provider.add_span_processor(SimpleSpanProcessor(reporter))\n"
        "    provider.get_tracer('t').start_span('s').end()\n"
        "    assert len(collector.spans) == 1, collector.spans\n"
        "    provider.shutdown()"
    )
    assert modules_after(code, ["requests"]) == [False]
