"""How ZipkinReporter talks to a collector: one kept-alive connection,
proxies from the environment, failures returned and never raised."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import shutil
import ssl
import subprocess
import threading
import time
import typing

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from tornado import httpserver, iostream, netutil, tcpclient, tcpserver, web

import divak
from divak.testing import SpanRecorder
from tests.conftest import free_port
from tests.zipkin_schema import validate_spans


def finished_spans(count: int) -> list[ReadableSpan]:
    recorder = SpanRecorder()
    provider = TracerProvider(resource=Resource.create({"service.name": "Sender"}))
    provider.add_span_processor(SimpleSpanProcessor(recorder))
    tracer = provider.get_tracer("test", "1")
    for index in range(count):
        tracer.start_span(f"span {index}").end()
    return recorder.spans


class _Spans(web.RequestHandler):
    def initialize(self, server: Collector) -> None:
        self.server = server

    async def post(self) -> None:
        self.server.received.append((self.request.uri or "", self.request.body))
        if self.server.delay:
            time.sleep(self.server.delay)
        self.set_status(202)
        if self.server.hang_up:  # without saying so: no "Connection: close"
            await self.finish()
            self.request.connection.close()  # type: ignore[union-attr]


class _CountingServer(httpserver.HTTPServer):
    def handle_stream(self, stream: iostream.IOStream, address: typing.Any) -> None:
        self.connections += 1
        super().handle_stream(stream, address)


class Collector:
    """A Zipkin endpoint in a thread of its own that counts TCP connections.

    Every path answers ``202``, so it serves as a forward proxy too (an
    HTTP proxy receives the collector's whole URL as request target).
    """

    def __init__(
        self,
        delay: float = 0.0,
        hang_up: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.delay = delay
        self.hang_up = hang_up
        self.received: list[tuple[str, bytes]] = []
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/api/v2"
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application([(r".*", _Spans, {"server": self})])
            self.server = _CountingServer(app, ssl_options=tls)
            self.server.connections = 0
            self.server.add_sockets(sockets)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()
            self.server.stop()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    @property
    def connections(self) -> int:
        return self.server.connections

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def zipkin() -> typing.Iterator[Collector]:
    server = Collector()
    yield server
    server.stop()


def warnings_of(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "divak.reporters" and r.levelno >= logging.WARNING
    ]


def test_batches_share_one_kept_alive_connection(
    zipkin: Collector, log_records: list[logging.LogRecord]
) -> None:
    reporter = divak.ZipkinReporter(zipkin.url)
    results = [reporter.export(finished_spans(3)) for _ in range(5)]
    reporter.shutdown()
    assert results == [SpanExportResult.SUCCESS] * 5
    assert zipkin.connections == 1
    assert [uri for uri, _ in zipkin.received] == ["/api/v2/spans"] * 5
    for _, body in zipkin.received:
        spans = json.loads(body)
        validate_spans(spans)
        assert [s["localEndpoint"]["serviceName"] for s in spans] == ["sender"] * 3
    assert warnings_of(log_records) == []


def test_a_connection_the_collector_closed_is_replaced_at_once(
    log_records: list[logging.LogRecord],
) -> None:
    # The collector closes each connection after its response, without a
    # "Connection: close"; no retry is allowed, yet no batch is lost.
    zipkin = Collector(hang_up=True)
    try:
        reporter = divak.ZipkinReporter(zipkin.url, retry_for=0)
        results = [reporter.export(finished_spans(1)) for _ in range(3)]
        reporter.shutdown()
        assert results == [SpanExportResult.SUCCESS] * 3
        assert zipkin.connections == 3
        assert len(zipkin.received) == 3
        assert warnings_of(log_records) == []
    finally:
        zipkin.stop()


def test_a_read_timeout_fails_the_batch_without_a_retry(
    log_records: list[logging.LogRecord],
) -> None:
    slow = Collector(delay=1.5)
    try:
        reporter = divak.ZipkinReporter(slow.url, timeout=0.3, retry_for=30)
        started = time.monotonic()
        assert reporter.export(finished_spans(2)) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 1.5
        reporter.shutdown()
        time.sleep(1.6)  # the collector may have stored it: sent once only
        assert len(slow.received) == 1
        [warning] = warnings_of(log_records)
        assert "cannot send 2 spans to Zipkin" in warning
        assert "TimeoutError" in warning
    finally:
        slow.stop()


def test_the_proxy_in_the_environment_is_used(
    zipkin: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipkin.invalid cannot resolve: only the proxy can deliver the batch.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{zipkin.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    reporter = divak.ZipkinReporter("http://zipkin.invalid:9411/api/v2")
    assert reporter.export(finished_spans(2)) is SpanExportResult.SUCCESS
    [(target, body)] = zipkin.received
    assert target == "http://zipkin.invalid:9411/api/v2/spans"
    assert len(json.loads(body)) == 2

    monkeypatch.setenv("NO_PROXY", "zipkin.invalid")
    reporter.url = "http://zipkin.invalid:9411/api/v2"  # read again per URL
    reporter.retry_for = 0
    assert reporter.export(finished_spans(1)) is SpanExportResult.FAILURE
    assert len(zipkin.received) == 1
    reporter.shutdown()


class _ConnectProxy(tcpserver.TCPServer):
    """An HTTP proxy that only tunnels (``CONNECT host:port``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tunnels: list[str] = []

    async def handle_stream(
        self, stream: iostream.IOStream, address: typing.Any
    ) -> None:
        head = await stream.read_until(b"\r\n\r\n")
        method, target, _ = head.decode("latin-1").split(" ", 2)
        assert method == "CONNECT"
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream = await tcpclient.TCPClient().connect(host, int(port))
        await stream.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(source: iostream.IOStream, sink: iostream.IOStream) -> None:
            try:
                while True:
                    await sink.write(await source.read_bytes(65536, partial=True))
            except iostream.StreamClosedError:
                sink.close()

        await asyncio.gather(pipe(stream, upstream), pipe(upstream, stream))


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> pathlib.Path:
    """A self-signed certificate for 127.0.0.1 (its key beside it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return tmp_path / "cert.pem"


def test_https_verifies_the_collector_and_tunnels_through_a_proxy(
    certificate: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    log_records: list[logging.LogRecord],
) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate, certificate.with_name("key.pem"))
    secure = Collector(tls=tls)
    try:
        untrusted = divak.ZipkinReporter(secure.url, retry_for=0)
        assert untrusted.export(finished_spans(1)) is SpanExportResult.FAILURE
        [warning] = warnings_of(log_records)
        assert "SSLCertVerificationError" in warning and "self-signed" in warning
        assert secure.received == []

        # The certificate authorities OpenSSL reads from the environment.
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
        reporter = divak.ZipkinReporter(secure.url)
        assert reporter.export(finished_spans(2)) is SpanExportResult.SUCCESS
        assert reporter.export(finished_spans(1)) is SpanExportResult.SUCCESS
        reporter.shutdown()
        assert [uri for uri, _ in secure.received] == ["/api/v2/spans"] * 2
        assert secure.connections == 2  # the untrusted one, then one for both

        proxy = _ConnectProxy()
        proxy_sockets = netutil.bind_sockets(0, "127.0.0.1")
        secure.loop.call_soon_threadsafe(proxy.add_sockets, proxy_sockets)
        port = proxy_sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        tunnelled = divak.ZipkinReporter(secure.url)
        assert tunnelled.export(finished_spans(1)) is SpanExportResult.SUCCESS
        tunnelled.shutdown()
        assert proxy.tunnels == [f"127.0.0.1:{secure.port}"]
        assert len(secure.received) == 3
    finally:
        secure.stop()


def test_failures_are_returned_never_raised(
    zipkin: Collector, log_records: list[logging.LogRecord]
) -> None:
    not_http = divak.ZipkinReporter("ftp://127.0.0.1/api/v2")
    assert not_http.export(finished_spans(1)) is SpanExportResult.FAILURE
    assert "not an http or https URL" in warnings_of(log_records)[0]

    dead = f"http://127.0.0.1:{free_port()}/api/v2"
    refused = divak.ZipkinReporter(dead, retry_for=0)
    assert refused.export(finished_spans(1)) is SpanExportResult.FAILURE

    reporter = divak.ZipkinReporter(zipkin.url)
    assert reporter.export([]) is SpanExportResult.SUCCESS
    reporter.shutdown()
    reporter.shutdown()  # idempotent
    assert reporter.export(finished_spans(1)) is SpanExportResult.FAILURE
    assert zipkin.received == []
