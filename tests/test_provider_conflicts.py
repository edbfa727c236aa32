"""Provider conflicts: which side wins, and no application exports another's spans.

Each scenario runs in a subprocess (the global provider is per process),
serving real applications on 127.0.0.1; see
``tests/services/provider_conflicts.py``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider

from divak.export.queue import SpanQueue
from divak.testing import SpanRecorder
from divak.tracing.provider import join

from .conftest import ROOT


@functools.cache
def run_mode(mode: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "tests/services/provider_conflicts.py", mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def names(spans: list[dict]) -> list[str]:
    return sorted(span["name"] for span in spans)


def one_request(spans: list[dict]) -> list[dict]:
    """The spans of the one request an application served: server, user."""
    requests = [s for s in spans if s["name"] in ("GET /work", "user-span")]
    assert names(requests) == ["GET /work", "user-span"], names(spans)
    server, user = sorted(requests, key=lambda s: s["name"] != "GET /work")
    assert user["trace_id"] == server["trace_id"]
    assert user["parent"] == server["span_id"]
    return requests


def test_a_preset_provider_gets_divak_processors_once() -> None:
    seen, _ = run_mode("user-provider")
    after_one, after_two, after_restart = seen["added"]
    # The first application adds divak's processors; a second application,
    # and a third started after the first stopped, add nothing more.
    assert after_one.count("B3DebugMarker") == 1
    assert after_two == after_one
    assert after_restart == after_one
    # The one marker still marks the debug trace of the second application.
    assert [s["debug"] for s in one_request(seen["two"])] == [True, True]
    assert not any(s["debug"] for s in seen["one"])


def test_a_service_name_the_adopted_provider_overrides_is_warned_once() -> None:
    seen, stderr = run_mode("rename")
    warnings = [line for line in stderr.splitlines() if line.startswith("WARNING")]
    # Two requests, one warning, naming both names; the application that
    # asked for the provider's own name is not warned about its name.
    (named,) = [line for line in warnings if "service name" in line]
    assert "'divak-svc'" in named and "'user-svc'" in named
    assert seen["service_name"] == "user-svc"
    assert {s["service"] for s in seen["renamed"]} == {"user-svc"}
    # Its sample probability cannot take effect either: both samplers named.
    (sampler,) = [line for line in warnings if "sampler" in line]
    assert "root:TraceIdRatioBased{0.5}" in sampler
    assert "root:AlwaysOnSampler" in sampler
    assert len(warnings) == 2, stderr


def test_applications_sharing_a_preset_provider_export_only_their_own_spans() -> (
    None
):
    seen, stderr = run_mode("user-provider")
    one = one_request(seen["one"])
    two = one_request(seen["two"])
    three = one_request(seen["three"])
    traces = [{s["trace_id"] for s in spans} for spans in (one, two, three)]
    assert len(set.union(*traces)) == 3  # three requests, three traces
    # Spans outside any request: the first application still running.
    assert names(seen["one"]) == ["GET /work", "outside", "user-span"]
    assert names(seen["two"]) == ["GET /work", "outside-later", "user-span"]
    assert names(seen["three"]) == ["GET /work", "user-span"]
    # The provider's resource names them all; the user's own exporter sees
    # every span once.
    assert seen["service_names"] == ["user-svc"] * 3
    exported = seen["one"] + seen["two"] + seen["three"]
    assert {s["service"] for s in exported} == {"user-svc"}
    assert sorted(s["span_id"] for s in exported) == sorted(
        s["span_id"] for s in seen["user"]
    )
    for name in ("one", "two"):
        assert sum(f"'{name}'" in line for line in stderr.splitlines()) == 1


def test_applications_without_a_global_provider_export_only_their_own_spans() -> (
    None
):
    seen, _ = run_mode("no-global")
    assert seen["global_is_one"] is True
    one = one_request(seen["one"])
    two = one_request(seen["two"])
    assert {s["trace_id"] for s in one}.isdisjoint(s["trace_id"] for s in two)
    assert names(seen["one"]) == ["GET /work", "outside", "user-span"]
    assert {s["service"] for s in seen["one"]} == {"one"}
    # The global tracer's span inside the second application's request is
    # the second application's, under its own service name.
    assert names(seen["two"]) == ["GET /work", "user-span"]
    assert {s["service"] for s in seen["two"]} == {"two"}


def test_spans_never_ended_cost_a_bounded_memory() -> None:
    """The router forgets the oldest open spans of a second owner past its cap."""
    provider = TracerProvider(shutdown_on_exit=False)
    first, second = SpanRecorder(), SpanRecorder()
    first_queue, second_queue = SpanQueue(first), SpanQueue(second)
    join(provider, [first_queue])
    owner = join(provider, [second_queue])
    owner.router.MAX_OPEN_SPANS = 2
    tracer = provider.get_tracer("test")
    context = owner.mark(Context())
    spans = [tracer.start_span(f"s{i}", context=context) for i in range(3)]
    for span in spans:
        span.end()
    assert first_queue.force_flush() and second_queue.force_flush()
    # The oldest was forgotten: it went to the provider's first owner.
    assert [s.name for s in first.spans] == ["s0"]
    assert [s.name for s in second.spans] == ["s1", "s2"]
    provider.shutdown()
