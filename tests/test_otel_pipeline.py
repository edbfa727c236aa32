"""divak inside an OpenTelemetry set-up: one pipeline, whoever made it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

pytest.importorskip("httpx")
pytest.importorskip("opentelemetry.instrumentation.httpx")


def run_mode(mode: str) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "tests/services/otel_pipeline.py", mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def by_scope(spans: list[dict], scope: str) -> list[dict]:
    return [span for span in spans if span["scope"] == scope]


def test_divak_provider_becomes_the_global_one_when_none_is_set() -> None:
    seen, _ = run_mode("no-global")
    assert seen["global_is_divak"] is True
    (server,) = by_scope(seen["divak"], "divak")
    (httpx_span,) = by_scope(seen["divak"], "opentelemetry.instrumentation.httpx")
    (user_span,) = by_scope(seen["divak"], "user.code")
    # Other instrumentation inside the handler reaches divak's reporter,
    # parented by the request's SERVER span.
    assert httpx_span["kind"] == "CLIENT"
    assert httpx_span["parent"] == server["span_id"]
    assert user_span["parent"] == server["span_id"]
    assert {s["trace_id"] for s in seen["divak"]} == {server["trace_id"]}


def test_a_preset_global_provider_is_used_and_every_span_arrives_once() -> None:
    seen, _ = run_mode("preset-global")
    ids = [span["span_id"] for span in seen["divak"]]
    assert len(ids) == len(set(ids)) == 4  # outer client, server, inner client, user
    # The user's own processors see the same spans: one pipeline, not two.
    assert sorted(ids) == sorted(span["span_id"] for span in seen["user"])
    (server,) = by_scope(seen["divak"], "divak")
    assert [s["parent"] for s in by_scope(seen["divak"], "user.code")] == [
        server["span_id"]
    ]


def test_the_global_provider_can_be_left_alone() -> None:
    seen, _ = run_mode("private")
    assert seen["global_is_divak"] is False
    assert [s["scope"] for s in seen["divak"]] == ["divak"]


def test_tornado_instrumentation_is_turned_off_and_reported_once() -> None:
    pytest.importorskip("opentelemetry.instrumentation.tornado")
    seen, stderr = run_mode("tornado-instrumented")
    assert stderr.count("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado") == 1
    assert stderr.count("divak turned it off") == 1
    # One span for the request, divak's SERVER span: the instrumentation's
    # own span (nested as INTERNAL) is gone, and so are its CLIENT spans.
    calls = [s for s in seen["divak"] if s["name"] == "GET /calls"]
    assert [(s["kind"], s["scope"]) for s in calls] == [("SERVER", "divak")]
    assert calls[0]["parent"] is None
    assert by_scope(seen["divak"], "opentelemetry.instrumentation.tornado") == []
