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
from .test_redaction import LEAKS, Leak

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

    def wait_for_event(self, request_id: str, timeout: float = 15.0) -> list[dict]:
        """The events tagged with *request_id*, once the first one arrived."""

        def tagged() -> list[dict]:
            return [
                event
                for event in self.events
                if event.get("tags", {}).get("divak.request_id") == request_id
            ]

        with self.received:
            self.received.wait_for(tagged, timeout)
            return tagged()

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


@pytest.fixture(scope="module")
def sentry_service():
    """One service reporting to one fake Sentry, for every row of a table."""
    sentry = FakeSentry()
    process, port = start_service(
        ["tests/services/sentry_service.py"],
        env={"SENTRY_DSN": sentry.dsn, "OTEL_TRACES_EXPORTER": "none"},
    )
    yield sentry, port
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    sentry.stop()


SENTRY_LEAKS = [leak for leak in LEAKS if not leak.setting_only]


@pytest.mark.parametrize("leak", SENTRY_LEAKS, ids=[leak.item for leak in SENTRY_LEAKS])
def test_sentry_events_carry_no_secret(sentry_service, leak: Leak) -> None:
    """Issue 20, item 9: the request of an event (URL, query string, headers)
    is redacted as the logs are; Sentry copies the query string raw."""
    sentry, port = sentry_service
    target, headers = leak.request()
    request_id = "leak-" + leak.secret().removeprefix("Hunter2")
    status = _get(port, target, {**headers, "Request-Id": request_id})
    assert status == 500
    events = sentry.wait_for_event(request_id)
    assert events, "no event reached the fake Sentry"
    crash = next(e for e in events if "boom in a handler" in json.dumps(e))
    assert crash["request"]["url"].startswith(f"http://127.0.0.1:{port}/")
    assert leak.secret() not in json.dumps(events)
