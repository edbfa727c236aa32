"""Sentry events carry the request's trace id and request id."""

from __future__ import annotations

import gzip
import json
import signal
import threading
import urllib.error
import urllib.request
import zlib

import pytest
from tornado import web

import divak.integrations.sentry

from .conftest import ThreadedServer, start_service

pytest.importorskip("sentry_sdk")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class FakeSentry(ThreadedServer):
    """A Sentry ingest endpoint on 127.0.0.1 that keeps the envelopes' events."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.paths: list[str] = []
        self.received = threading.Condition()
        sentry = self

        class Envelope(web.RequestHandler):
            def post(self, project: str) -> None:
                body = self.request.body
                encoding = self.request.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                sentry.add(self.request.path, body)
                self.write({"id": "0" * 32})

        super().__init__(web.Application([(r"/api/(\d+)/envelope/", Envelope)]))

    @property
    def dsn(self) -> str:
        return f"http://public0key@127.0.0.1:{self.port}/42"

    def add(self, path: str, body: bytes) -> None:
        lines = body.split(b"\n")
        with self.received:
            self.paths.append(path)
            # Envelope: a header line, then (item header, payload) pairs.
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    self.events.append(json.loads(payload))
            self.received.notify_all()


@pytest.fixture
def fake_sentry():
    sentry = FakeSentry()
    yield sentry
    sentry.stop()


def _get(port: int, path: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_handler_exception_reaches_sentry_tagged_with_trace_and_request_id(
    fake_sentry,
):
    process, port = start_service(
        ["tests/services/sentry_service.py"],
        env={"SENTRY_DSN": fake_sentry.dsn, "OTEL_TRACES_EXPORTER": "none"},
    )
    try:
        status = _get(
            port,
            "/crash",
            {
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                "Request-Id": "req-sentry-1",
            },
        )
        second = _get(port, "/log-error", {"Request-Id": "req-sentry-2"})
    finally:
        process.send_signal(signal.SIGTERM)  # the Sentry SDK flushes at exit
        output, _ = process.communicate(timeout=60)
    assert status == 500 and second == 200, output
    assert process.returncode == 0, output
    assert set(fake_sentry.paths) == {"/api/42/envelope/"}
    crash = next(
        e
        for e in fake_sentry.events
        if "boom in a handler" in json.dumps(e.get("exception", {}))
    )
    assert crash["tags"]["otel.trace_id"] == TRACE_ID
    assert crash["tags"]["divak.request_id"] == "req-sentry-1"
    assert crash["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert crash["contexts"]["trace"]["span_id"] != PARENT_ID  # the server span
    logged = next(
        e
        for e in fake_sentry.events
        if "something failed quietly" in json.dumps(e.get("logentry", e))
    )
    assert logged["tags"]["divak.request_id"] == "req-sentry-2"
    assert len(logged["tags"]["otel.trace_id"]) == 32
    assert logged["contexts"]["trace"]["trace_id"] == logged["tags"]["otel.trace_id"]


def test_without_dsn_install_does_nothing(monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert divak.integrations.sentry.install() is False


def test_add_ids_outside_a_request_leaves_the_event_untagged():
    event = divak.integrations.sentry.add_ids({"message": "x"}, {})
    assert event == {"message": "x", "tags": {}}
