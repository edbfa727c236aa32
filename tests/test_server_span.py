"""The SERVER span's attributes: semantic conventions, bounded values."""

from __future__ import annotations

import logging
import socket

from opentelemetry.trace import SpanKind, StatusCode
from tornado import web

import divak
from divak.testing import SpanRecorder

from .conftest import flush, listen, run


class Echo(web.RequestHandler):
    def get(self) -> None:
        self.write("ok")


class Broken(web.RequestHandler):
    def get(self) -> None:
        self.send_error(503)


def serve(raw_requests: list[bytes | str], **settings: object) -> SpanRecorder:
    """Send each raw HTTP/1.1 request on its own connection; return the spans."""

    class App(divak.Recorder, web.Application):
        pass

    app = App([(r"/echo", Echo), (r"/broken", Broken)], **settings)
    recorder = SpanRecorder()
    app.add_divak_reporter(recorder)

    async def go() -> None:
        import asyncio

        port = listen(app)
        loop = asyncio.get_running_loop()
        for raw in raw_requests:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            await loop.sock_sendall(
                sock, raw if isinstance(raw, bytes) else raw.encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                answer += chunk
            sock.close()
        await flush(app)
        app._test_server.stop()

    try:
        run(go())
    finally:
        app.divak_shutdown()
    return recorder


def test_request_derived_values_are_capped() -> None:
    long_agent = "a" * 60_000
    long_host = "h" * 10_000
    recorder = serve(
        [
            f"GET /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: {long_agent}\r\n\r\n",
            f"GET /echo HTTP/1.1\r\nHost: {long_host}\r\n\r\n",
        ]
    )
    agent, host = sorted(
        recorder.find("GET /echo"), key=lambda s: "user_agent.original" in s.attributes
    )[::-1]
    assert agent.attributes["user_agent.original"] == "a" * 256
    assert host.attributes["server.address"] == "h" * 256
    for span in (agent, host):
        assert all(
            len(value) <= 256
            for value in span.attributes.values()
            if isinstance(value, str)
        )


def test_the_cap_is_a_setting() -> None:
    recorder = serve(
        [b"GET /echo HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"b" * 100 + b"\r\n\r\n"],
        divak_max_request_attribute_length=10,
    )
    assert recorder.one("GET /echo").attributes["user_agent.original"] == "b" * 10


def test_server_port_comes_from_the_scheme_when_host_has_none() -> None:
    recorder = serve([b"GET /echo HTTP/1.1\r\nHost: example.com\r\n\r\n"])
    span = recorder.one("GET /echo")
    assert span.attributes["server.address"] == "example.com"
    assert span.attributes["server.port"] == 80
    assert span.attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(span.attributes["network.peer.port"], int)


def test_forwarded_host_is_the_server_address_only_with_xheaders() -> None:
    raw = (
        b"GET /echo HTTP/1.1\r\nHost: internal:8080\r\n"
        b"X-Forwarded-Host: api.example.com:8443\r\n\r\n"
    )
    trusted = serve([raw], xheaders=True).one("GET /echo")
    assert trusted.attributes["server.address"] == "api.example.com"
    assert trusted.attributes["server.port"] == 8443
    untrusted = serve([raw]).one("GET /echo")
    assert untrusted.attributes["server.address"] == "internal"
    assert untrusted.attributes["server.port"] == 8080


def test_an_error_status_has_no_redundant_description() -> None:
    span = serve([b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n"]).one("GET /broken")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None
    assert span.attributes["error.type"] == "503"


def test_a_raising_access_log_filter_never_loses_the_span() -> None:
    class Raising(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("broken filter")

    broken = Raising()
    access = logging.getLogger("tornado.access")
    access.addFilter(broken)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        recorder = serve([b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"])
    finally:
        access.removeFilter(broken)
        access.setLevel(level)
    assert recorder.one("GET /echo").attributes["http.response.status_code"] == 200


def test_secrets_never_reach_the_span() -> None:
    recorder = serve(
        [
            b"GET /echo?page=2&token=s3cret&api_key=k3y;password=pw HTTP/1.1\r\n"
            b"Host: x\r\n\r\n",
            b"GET http://user:PW@x/echo?access_token=t0k HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
    )
    # The absolute-form target routes nowhere: Tornado matches its path.
    spans = recorder.find(kind=SpanKind.SERVER)
    assert sorted(span.name for span in spans) == ["GET", "GET /echo"]
    assert recorder.one("GET").attributes["url.path"] == (
        "http://REDACTED:REDACTED@x/echo"
    )
    text = repr([dict(span.attributes) for span in spans])
    for secret in ("s3cret", "k3y", "pw", "PW", "user:", "t0k"):
        assert secret not in text
    queries = sorted(span.attributes["url.query"] for span in spans)
    assert queries == [
        "access_token=REDACTED",
        "page=2&token=REDACTED&api_key=REDACTED;password=REDACTED",
    ]


def test_configured_names_are_redacted_too() -> None:
    recorder = serve(
        [b"GET /echo?session=abc&page=1 HTTP/1.1\r\nHost: x\r\n\r\n"],
        divak_redacted_query_params=["session"],
    )
    span = recorder.one("GET /echo")
    assert span.attributes["url.query"] == "session=REDACTED&page=1"
