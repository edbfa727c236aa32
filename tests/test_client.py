"""HttpClientMixin.send_request against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
import typing

import pytest
from opentelemetry.trace import SpanKind, StatusCode
from tornado import httpclient, web

import divak
from divak.client.mixin import redact_url
from divak.testing import SpanRecorder
from tests.conftest import flush, free_port, listen, run


class Flaky(web.RequestHandler):
    """Fails the first ``fail`` requests of a key with ``status``, then answers.

    Query arguments: ``key``, ``fail`` (count), ``status``, ``retry_after``
    (``Retry-After`` value; ``date:N`` for an HTTP date N seconds ahead),
    ``sleep`` (seconds before answering).
    """

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, log: dict) -> None:
        self.log = log

    async def handle(self) -> None:
        key = self.get_query_argument("key", "k")
        attempts = self.log.setdefault(key, [])
        attempts.append((time.monotonic(), dict(self.request.headers)))
        sleep = float(self.get_query_argument("sleep", "0"))
        if sleep:
            await asyncio.sleep(sleep)
        if len(attempts) <= int(self.get_query_argument("fail", "0")):
            self.set_status(int(self.get_query_argument("status", "503")))
            retry_after = self.get_query_argument("retry_after", None)
            if retry_after and retry_after.startswith("date:"):
                when = time.time() + float(retry_after[5:])
                retry_after = email.utils.formatdate(when, usegmt=True)
            if retry_after:
                self.set_header("Retry-After", retry_after)
            self.finish("failing")
            return
        self.finish(
            {
                "method": self.request.method,
                "body": self.request.body.decode(),
                "content_type": self.request.headers.get("Content-Type"),
                "attempts": len(attempts),
            }
        )

    get = post = put = patch = delete = handle


class App(divak.Recorder, divak.Application):
    def __init__(self, **settings: typing.Any) -> None:
        super().__init__([], service="client-test", **settings)
        self.spans = SpanRecorder()
        self.add_divak_reporter(self.spans)


class Caller(divak.HttpClientMixin):
    """The mix-in on a plain object: all it needs is ``application``."""

    def __init__(self, application: App) -> None:
        self.application = application


def serve() -> tuple[str, dict]:
    log: dict = {}
    port = listen(web.Application([(r"/.*", Flaky, {"log": log})]))
    return f"http://127.0.0.1:{port}", log


def client_spans(app: App) -> list:
    spans = [s for s in app.spans.spans if s.kind is SpanKind.CLIENT]
    return sorted(spans, key=lambda s: s.attributes.get("http.request.resend_count", 0))


def test_retries_until_success_with_one_span_per_attempt():
    async def scenario():
        base, log = serve()
        app = App()
        with app.divak_tracer.start_as_current_span("operation") as parent:
            response = await Caller(app).send_request(f"{base}/x?fail=2&status=503")
        await flush(app)
        return response, log, app, parent

    response, log, app, parent = run(scenario())
    assert response.code == 200
    assert json.loads(response.body)["attempts"] == 3
    spans = client_spans(app)
    assert len(spans) == 3
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [
        None,
        1,
        2,
    ]
    assert [s.attributes["http.response.status_code"] for s in spans] == [503, 503, 200]
    assert {s.parent.span_id for s in spans} == {parent.get_span_context().span_id}
    assert spans[0].status.status_code is StatusCode.ERROR
    assert spans[0].attributes["error.type"] == "503"
    assert spans[2].status.status_code is StatusCode.UNSET
    assert spans[2].name == "GET"
    assert spans[2].attributes["server.address"] == "127.0.0.1"
    # Every attempt carries its own span id downstream.
    parents = {h["Traceparent"].split("-")[2] for _, h in log["k"]}
    assert parents == {format(s.context.span_id, "016x") for s in spans}


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retried_statuses(status):
    async def scenario():
        base, _log = serve()
        app = App()
        return await Caller(app).send_request(f"{base}/x?fail=1&status={status}")

    assert run(scenario()).code == 200


def test_other_errors_are_not_retried():
    async def scenario():
        base, log = serve()
        app = App()
        response = await Caller(app).send_request(f"{base}/x?fail=1&status=500")
        return response, log

    response, log = run(scenario())
    assert response.code == 500
    assert len(log["k"]) == 1


def test_retry_after_seconds_is_honoured():
    async def scenario():
        base, log = serve()
        app = App()
        response = await Caller(app).send_request(
            f"{base}/x?fail=1&status=503&retry_after=1"
        )
        return response, log

    response, log = run(scenario())
    assert response.code == 200
    (first, _), (second, _) = log["k"]
    assert second - first >= 0.9


def test_retry_after_http_date_is_honoured():
    async def scenario():
        base, log = serve()
        app = App()
        response = await Caller(app).send_request(
            f"{base}/x?fail=1&status=429&retry_after=date:2"
        )
        return response, log

    response, log = run(scenario())
    assert response.code == 200
    (first, _), (second, _) = log["k"]
    assert second - first >= 0.5  # an HTTP date has whole seconds


def test_retry_after_past_the_deadline_returns_the_answer():
    async def scenario():
        base, log = serve()
        app = App()
        started = time.monotonic()
        response = await Caller(app).send_request(
            f"{base}/x?fail=1&status=503&retry_after=60", deadline=5
        )
        return response, log, time.monotonic() - started

    response, log, elapsed = run(scenario())
    assert response.code == 503
    assert len(log["k"]) == 1
    assert elapsed < 5


def test_deadline_holds_while_the_server_keeps_failing():
    async def scenario():
        base, log = serve()
        app = App()
        started = time.monotonic()
        response = await Caller(app).send_request(
            f"{base}/x?fail=1000000&status=503&retry_after=0",
            retries=1000000,
            deadline=2.0,
        )
        return response, log, time.monotonic() - started

    # The last answer, never a timeout, however busy the machine is.
    response, log, elapsed = run(scenario())
    assert response.code == 503
    assert len(log["k"]) > 1
    assert elapsed < 30  # 2 s deadline; a million retries would take far longer


def test_no_retry_starts_that_could_only_time_out():
    """A 503 with too little time left is returned, not turned into a 599."""

    async def scenario():
        base, log = serve()
        app = App()
        # The first 503 comes after 2.2 s: 0.8 s left, less than the 1 s a
        # retry needs (and 0.8 s of slack for a busy machine).
        response = await Caller(app).send_request(
            f"{base}/x?fail=1000&status=503&retry_after=0&sleep=2.2",
            deadline=3.0,
            min_attempt_time=1.0,
        )
        await flush(app)
        return response, log, app

    response, log, app = run(scenario())
    assert response.code == 503
    assert len(log["k"]) == 1
    assert all(
        span.attributes["http.response.status_code"] == 503
        for span in client_spans(app)
    )


def test_client_span_names_and_attributes_follow_the_conventions():
    async def scenario():
        base, _log = serve()
        app = App()
        caller = Caller(app)
        await caller.send_request(
            f"{base}/items/7?fail=1&status=500",
            url_template="/items/{id}",
            peer_service="inventory",
        )
        await caller.send_request(f"{base}/plain")
        port = free_port()
        with pytest.raises(OSError):
            await caller.send_request(f"http://127.0.0.1:{port}/", retries=0)
        await flush(app)
        return app

    templated, plain, refused = client_spans_in_order(run(scenario()))
    assert templated.name == "GET /items/{id}"
    assert templated.attributes["url.template"] == "/items/{id}"
    assert templated.attributes["peer.service"] == "inventory"
    assert templated.attributes["network.protocol.version"] == "1.1"
    assert templated.status.status_code is StatusCode.ERROR
    assert templated.status.description == "500 Internal Server Error"
    assert plain.name == "GET" and "peer.service" not in plain.attributes
    assert plain.attributes["network.protocol.version"] == "1.1"
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.status.description  # the reason, never empty


def client_spans_in_order(app: App) -> list:
    spans = [s for s in app.spans.spans if s.kind is SpanKind.CLIENT]
    return sorted(spans, key=lambda s: s.start_time)


def test_deadline_cuts_a_hanging_attempt():
    async def scenario():
        base, _log = serve()
        app = App()
        started = time.monotonic()
        with pytest.raises(httpclient.HTTPClientError) as raised:
            await Caller(app).send_request(
                f"{base}/x?sleep=10", timeout=30, deadline=0.5
            )
        await flush(app)
        return raised.value, time.monotonic() - started, app

    error, elapsed, app = run(scenario())
    assert error.code == 599
    assert elapsed < 5
    span = client_spans(app)[-1]
    assert span.attributes["error.type"].endswith("HTTPTimeoutError")
    assert span.status.status_code is StatusCode.ERROR


def test_post_is_not_retried_unless_asked():
    async def scenario():
        base, log = serve()
        app = App()
        caller = Caller(app)
        once = await caller.send_request(
            f"{base}/x?key=a&fail=1", "POST", body=b"payload"
        )
        retried = await caller.send_request(
            f"{base}/x?key=b&fail=1",
            "POST",
            body=b"payload",
            retry_non_idempotent=True,
        )
        return once, retried, log

    once, retried, log = run(scenario())
    assert once.code == 503 and len(log["a"]) == 1
    assert retried.code == 200 and len(log["b"]) == 2
    assert json.loads(retried.body)["body"] == "payload"


def test_connection_errors_are_retried_then_raised():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends

    async def scenario():
        app = App()
        with pytest.raises(ConnectionRefusedError):
            await Caller(app).send_request(f"http://127.0.0.1:{port}/", retries=2)
        await flush(app)
        return app

    app = run(scenario())
    spans = client_spans(app)
    assert len(spans) == 3
    assert all(s.attributes["error.type"] == "ConnectionRefusedError" for s in spans)


def test_json_body():
    async def scenario():
        base, _log = serve()
        app = App()
        return await Caller(app).send_request(
            f"{base}/x", "PUT", json={"name": "caf\u00e9", "n": [1, 2]}
        )

    answer = json.loads(run(scenario()).body)
    assert answer["method"] == "PUT"
    assert answer["content_type"] == "application/json; charset=utf-8"
    assert json.loads(answer["body"]) == {"name": "caf\u00e9", "n": [1, 2]}


def test_response_is_tornados_http_response():
    async def scenario():
        base, _log = serve()
        return await Caller(App()).send_request(f"{base}/x?fail=1&status=404")

    response = run(scenario())
    assert isinstance(response, httpclient.HTTPResponse)
    assert response.code == 404 and response.body == b"failing"


def test_credentials_and_secret_query_parameters_are_redacted():
    async def scenario():
        base, log = serve()
        app = App(divak_capture_request_headers=["Authorization", "X-Plain"])
        url = base.replace("//", "//user:hunter2@") + (
            "/x?token=abc&page=2&Signature=s1g&API_KEY=k#frag"
        )
        await Caller(app).send_request(
            url, headers={"Authorization": "Bearer t0ken", "X-Plain": "v"}
        )
        await flush(app)
        return app, base, log

    app, base, log = run(scenario())
    span = client_spans(app)[0]
    port = base.rpartition(":")[2]
    assert span.attributes["url.full"] == (
        f"http://REDACTED:REDACTED@127.0.0.1:{port}"
        "/x?token=REDACTED&page=2&Signature=REDACTED&API_KEY=REDACTED"
    )
    assert span.attributes["http.request.header.authorization"] == ("REDACTED",)
    assert span.attributes["http.request.header.x-plain"] == ("v",)
    assert "t0ken" not in repr(dict(span.attributes))
    # The server still got real credentials (Tornado sends the URL's).
    assert log["k"][0][1]["Authorization"].startswith("Basic ")


def test_redact_url_keeps_plain_urls():
    assert redact_url("https://example.com/a?b=c") == "https://example.com/a?b=c"


def test_propagation_only_to_allowed_hosts():
    async def scenario():
        base, log = serve()
        app = App(divak_propagation_hosts=["127.0.0.1"])
        app.add_divak_propagator(divak.TraceContextPropagation())
        app.add_divak_propagator(divak.RequestIdPropagation())
        caller = Caller(app)
        with app.divak_tracer.start_as_current_span("operation"):
            await caller.send_request(f"{base}/x?key=allowed")
            await caller.send_request(
                base.replace("127.0.0.1", "localhost") + "/x?key=other"
            )
        await flush(app)
        return log, app

    log, app = run(scenario())
    assert "Traceparent" in log["allowed"][0][1]
    assert "Traceparent" not in log["other"][0][1]
    assert len(client_spans(app)) == 2  # still traced, just not propagated


@pytest.mark.parametrize(
    ("hosts", "host", "allowed"),
    [
        (None, "anything.example", True),
        (["api.example.com"], "api.example.com", True),
        (["api.example.com"], "API.example.com.", True),
        (["api.example.com"], "evil.example.com", False),
        ([".example.com"], "a.b.example.com", True),
        (["*.example.com"], "example.com", True),
        (["*.example.com"], "badexample.com", False),
        ([], "api.example.com", False),
    ],
)
def test_propagation_host_patterns(hosts, host, allowed):
    from divak.client.mixin import _host_allowed

    assert _host_allowed(host, hosts) is allowed


def test_tornado_request_timeout_argument_is_the_attempt_timeout():
    async def scenario():
        base, log = serve()
        started = time.monotonic()
        with pytest.raises(httpclient.HTTPClientError):
            await Caller(App()).send_request(
                f"{base}/x?sleep=10", request_timeout=0.3, retries=1
            )
        return log, time.monotonic() - started

    log, elapsed = run(scenario())
    assert len(log["k"]) == 2  # a timeout is retried
    assert elapsed < 5


def test_retry_decision_per_method_and_status():
    """Each retried status is retried for idempotent methods only (RFC 9110)."""
    cases = [
        (method, status)
        for method in ("GET", "PUT", "DELETE", "POST", "PATCH")
        for status in (429, 502, 503, 504, 500, 404)
    ]

    async def scenario():
        base, log = serve()
        caller = Caller(App())
        codes = {}
        for method, status in cases:
            response = await caller.send_request(
                f"{base}/x?key={method}{status}&fail=1&status={status}&retry_after=0",
                method,
                body=None if method in ("GET", "DELETE") else b"payload",
            )
            codes[method, status] = response.code
        return codes, log

    codes, log = run(scenario())
    for method, status in cases:
        retried = method in ("GET", "PUT", "DELETE") and status in (429, 502, 503, 504)
        assert len(log[f"{method}{status}"]) == (2 if retried else 1), (method, status)
        assert codes[method, status] == (200 if retried else status), (method, status)


def test_connection_errors_of_non_idempotent_methods_are_not_retried():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends

    async def scenario():
        app = App()
        for method in ("POST", "PATCH"):
            with pytest.raises(ConnectionRefusedError):
                await Caller(app).send_request(
                    f"http://127.0.0.1:{port}/", method, body=b"payload"
                )
        await flush(app)
        return app

    spans = client_spans(run(scenario()))
    assert sorted(s.attributes["http.request.method"] for s in spans) == [
        "PATCH",
        "POST",
    ]


class FailsOnceThenHangs(web.RequestHandler):
    """``503`` with ``Retry-After: 0`` to the first request, then no answer."""

    def initialize(self, log: list) -> None:
        self.log = log

    async def get(self) -> None:
        self.log.append(time.monotonic())
        if len(self.log) > 1:
            await asyncio.sleep(60)
        self.set_status(503)
        self.set_header("Retry-After", "0")
        self.finish("failing")


def test_a_retry_the_deadline_cuts_short_returns_the_previous_answer():
    """The 503 comes back, not the timeout of the retry the deadline ended."""

    async def scenario():
        log: list = []
        port = listen(web.Application([(r"/", FailsOnceThenHangs, {"log": log})]))
        app = App()
        response = await Caller(app).send_request(
            f"http://127.0.0.1:{port}/", deadline=1.5
        )
        await flush(app)
        return response, log, app

    response, log, app = run(scenario())
    assert response.code == 503 and response.body == b"failing"
    assert len(log) == 2
    first, retry = client_spans(app)
    assert first.attributes["http.response.status_code"] == 503
    assert retry.attributes["error.type"].endswith("HTTPTimeoutError")


def test_client_duration_metrics_carry_the_protocol_version():
    from divak.metrics import CLIENT_DURATION
    from divak.metrics.snapshot import snapshot

    async def scenario():
        base, _log = serve()
        app = App()
        caller = Caller(app)
        await caller.send_request(f"{base}/plain")
        await caller.send_request(f"{base}/items/7?key=v&fail=1&status=404", retries=0)
        port = free_port()
        with pytest.raises(OSError):
            await caller.send_request(f"http://127.0.0.1:{port}/", retries=0)
        return app

    app = run(scenario())
    points = snapshot(app.divak_metrics)[CLIENT_DURATION]["points"].values()
    versions = {
        dict(p["attributes"]).get("http.response.status_code", "none"): dict(
            p["attributes"]
        ).get("network.protocol.version")
        for p in points
    }
    # Answered attempts: the HTTP version of the answer (Tornado's client
    # speaks HTTP/1.1); an attempt that got no answer has none.
    assert versions == {"200": "1.1", "404": "1.1", "none": None}
