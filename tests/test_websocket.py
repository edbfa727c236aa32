"""WebSocket connections over real sockets: one span for the whole connection.

Every ``WebSocketHandler`` routed in a :class:`divak.Recorder` application
(plain, or with divak's handler mix-ins) gets one SERVER span from the
upgrade until the close, with its message counts and close code; its
handler methods run in the connection's context; metrics and a second
access line record the connection; a draining service closes it with 1001.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import struct
import subprocess
import threading
import time
import typing

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from tornado import httpclient, netutil, web, websocket

import divak
from divak.lifecycle.server import DrainingHTTPServer
from divak.testing import SpanRecorder

from .conftest import flush, listen, run, start_service

logger = logging.getLogger("chat")


class OpenFailed(Exception):
    """Raised by ``open`` for the room ``failopen``."""


class MessageFailed(Exception):
    """Raised by ``on_message`` for the message ``raise``."""


class Chat:
    """What every handler kind below does.

    ``open`` logs (and raises :class:`OpenFailed` in the room
    ``failopen``); ``on_message`` logs and echoes, except ``raise``
    (raises :class:`MessageFailed`), ``close:CODE`` (closes with CODE) and
    ``op`` (echoes inside ``record_operation("handle")`` when the handler
    has it); ``on_close`` logs.
    """

    def open(self, room: str) -> None:
        logger.info("open %s", room)
        if room == "failopen":
            raise OpenFailed("cannot open")

    def on_message(self, message: str | bytes) -> None:
        logger.info("message %s", message)
        if message == "raise":
            raise MessageFailed("bad message")
        if isinstance(message, str) and message.startswith("close:"):
            self.close(int(message[6:]), "done")  # type: ignore[attr-defined]
            return
        if message == "op":
            with self.record_operation("handle"):  # type: ignore[attr-defined]
                self.write_message(message)  # type: ignore[attr-defined]
            return
        binary = isinstance(message, bytes)
        self.write_message(message, binary=binary)  # type: ignore[attr-defined]

    def on_close(self) -> None:
        logger.info("closed")


class Plain(Chat, websocket.WebSocketHandler):
    """No divak mix-in at all."""


class Tracked(Chat, divak.RequestTracker, websocket.WebSocketHandler):
    """divak's tracing conveniences."""


class Logged(Chat, divak.Logger, websocket.WebSocketHandler):
    """divak's logger mix-in."""


class Both(Chat, divak.RequestTracker, divak.Logger, websocket.WebSocketHandler):
    """Both mix-ins."""


class Coroutine(Chat, divak.RequestTracker, websocket.WebSocketHandler):
    """``open`` and ``on_message`` are coroutines."""

    async def open(self, room: str) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        Chat.open(self, room)

    async def on_message(self, message: str | bytes) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        Chat.on_message(self, message)


KINDS = {"plain": Plain, "tracked": Tracked, "logged": Logged, "both": Both}


class App(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, recorder: SpanRecorder, **settings: typing.Any) -> None:
        routes: list[typing.Any] = [
            (rf"/{name}/(?P<room>\w+)", handler)
            for name, handler in {**KINDS, "coroutine": Coroutine}.items()
        ]
        super().__init__([*routes, (r"/metrics", divak.MetricsHandler)], **settings)
        self.set_divak_service("chat")
        self.add_divak_reporter(recorder)
        self.add_divak_propagator(divak.RequestIdPropagation())


async def connect(
    port: int, path: str, headers: dict[str, str] | None = None
) -> websocket.WebSocketClientConnection:
    request = httpclient.HTTPRequest(
        f"ws://127.0.0.1:{port}{path}", headers=headers or {}
    )
    return await websocket.websocket_connect(request)


async def wait_for_span(app: App, recorder: SpanRecorder, name: str) -> ReadableSpan:
    """The span called *name*, once the connection ended it."""
    deadline = time.monotonic() + 10
    while not recorder.find(name):
        assert time.monotonic() < deadline, f"no span {name!r} within 10 s"
        await asyncio.sleep(0.01)
        await flush(app)
    return recorder.one(name)


async def raw_handshake(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket by hand (a client that does only what the test says)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


# -- the span ----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_one_span_lasts_from_the_upgrade_until_the_close(kind: str) -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    name = f"GET /{kind}/{{room}}"

    async def go() -> int:
        port = listen(app)
        connection = await connect(port, f"/{kind}/lobby")
        for text in ("a", "b", "c"):
            await connection.write_message(text)
            assert await connection.read_message() == text
        last_echo = time.time_ns()
        await flush(app)
        assert not recorder.find(name)  # open: nothing ended yet
        assert app.divak_websocket_connections == 1
        connection.close(1000, "bye")
        await wait_for_span(app, recorder, name)
        assert app.divak_websocket_connections == 0
        return last_echo

    last_echo = run(go())
    span = recorder.one(name)
    attributes = span.attributes or {}
    assert span.kind is SpanKind.SERVER
    assert attributes["http.response.status_code"] == 101
    assert attributes["http.route"] == f"/{kind}/{{room}}"
    assert attributes["divak.websocket.messages_received"] == 3
    assert attributes["divak.websocket.messages_sent"] == 3
    assert attributes["divak.websocket.close_code"] == 1000
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None and span.end_time >= last_echo


def test_the_close_code_is_the_servers_when_it_closes_and_1006_without_a_frame() -> (
    None
):
    recorder = SpanRecorder()
    app = App(recorder)

    async def go() -> int | None:
        port = listen(app)
        closed_by_server = await connect(port, "/plain/one")
        await closed_by_server.write_message("close:4000")
        assert await closed_by_server.read_message() is None
        await wait_for_span(app, recorder, "GET /plain/{room}")
        # A client that goes away without a close frame.
        reader, writer = await raw_handshake(port, "/tracked/two")
        writer.close()
        await wait_for_span(app, recorder, "GET /tracked/{room}")
        return closed_by_server.close_code

    assert run(go()) == 4000
    by_server = recorder.one("GET /plain/{room}").attributes or {}
    assert by_server["divak.websocket.close_code"] == 4000
    assert by_server["divak.websocket.messages_received"] == 1
    assert by_server["divak.websocket.messages_sent"] == 0
    dropped = recorder.one("GET /tracked/{room}").attributes or {}
    assert dropped["divak.websocket.close_code"] == 1006


@pytest.mark.parametrize(
    ("path", "message", "error"),
    [
        ("/plain/failopen", None, OpenFailed),
        ("/plain/lobby", "raise", MessageFailed),
        ("/coroutine/failopen", None, OpenFailed),
        ("/coroutine/lobby", "raise", MessageFailed),
    ],
    ids=["open", "on_message", "coroutine-open", "coroutine-on_message"],
)
def test_an_exception_in_open_or_on_message_marks_the_span(
    path: str,
    message: str | None,
    error: type[Exception],
    log_records: list[logging.LogRecord],
) -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    name = f"GET /{path.split('/')[1]}/{{room}}"

    async def go() -> None:
        port = listen(app)
        connection = await connect(port, path)
        if message is not None:
            await connection.write_message("fine")
            assert await connection.read_message() == "fine"
            await connection.write_message(message)
        assert await connection.read_message() is None  # Tornado aborts it
        await wait_for_span(app, recorder, name)

    run(go())
    span = recorder.one(name)
    attributes = span.attributes or {}
    error_type = f"{__name__}.{error.__qualname__}"
    assert span.status.status_code is StatusCode.ERROR
    assert attributes["error.type"] == error_type
    assert attributes["http.response.status_code"] == 101
    assert attributes["divak.websocket.close_code"] == 1006
    events = [e for e in span.events if e.name == "exception"]
    assert len(events) == 1
    assert (events[0].attributes or {})["exception.type"] == error_type
    close_lines = [
        r for r in log_records if "websocket closed" in r.getMessage()
    ]
    assert [r.levelno for r in close_lines] == [logging.ERROR]


# -- the connection's context ------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "coroutine"])
def test_open_on_message_and_on_close_log_with_the_connections_ids(
    kind: str, log_records: list[logging.LogRecord]
) -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    name = f"GET /{kind}/{{room}}"

    async def go() -> None:
        port = listen(app)
        connection = await connect(port, f"/{kind}/lobby", {"Request-Id": "req-42"})
        await connection.write_message("hello")
        assert await connection.read_message() == "hello"
        await asyncio.sleep(0.05)  # the connection stays open a while
        connection.close(1000)
        await wait_for_span(app, recorder, name)

    run(go())
    span = recorder.one(name)
    assert span.end_time is not None
    trace_id = f"{span.context.trace_id:032x}"
    records = [r for r in log_records if r.name == "chat"]
    assert [r.getMessage() for r in records] == [
        "open lobby",
        "message hello",
        "closed",
    ]
    for record in records:
        assert record.otelTraceID == trace_id, record.getMessage()
        assert record.divak_request_id == "req-42", record.getMessage()
        # Written while the connection's span was open.
        assert span.start_time <= record.created * 1e9 <= span.end_time


def test_record_operation_in_on_message_is_a_child_of_the_connection() -> None:
    recorder = SpanRecorder()
    app = App(recorder)

    async def go() -> None:
        port = listen(app)
        connection = await connect(port, "/tracked/lobby")
        for _ in range(2):
            await connection.write_message("op")
            assert await connection.read_message() == "op"
        connection.close(1000)
        await wait_for_span(app, recorder, "GET /tracked/{room}")

    run(go())
    span = recorder.one("GET /tracked/{room}")
    operations = recorder.named("handle")
    assert len(operations) == 2
    for operation in operations:
        assert operation.parent is not None
        assert operation.parent.span_id == span.context.span_id
        assert span.start_time <= operation.start_time  # type: ignore[operator]
        assert operation.end_time <= span.end_time  # type: ignore[operator]
    assert not recorder.find("receive /tracked/{room}")  # off by default


def test_message_spans_when_turned_on() -> None:
    recorder = SpanRecorder()
    app = App(recorder, divak_websocket_message_spans=True)

    async def go() -> None:
        port = listen(app)
        connection = await connect(port, "/coroutine/lobby")
        await connection.write_message("op")
        assert await connection.read_message() == "op"
        await connection.write_message(b"bytes", binary=True)
        assert await connection.read_message() == b"bytes"
        await connection.write_message("raise")
        assert await connection.read_message() is None
        await wait_for_span(app, recorder, "GET /coroutine/{room}")

    run(go())
    span = recorder.one("GET /coroutine/{room}")
    messages = sorted(
        recorder.named("receive /coroutine/{room}"),
        key=lambda s: (s.attributes or {})["divak.websocket.message.index"],
    )
    assert [(m.attributes or {})["divak.websocket.message.type"] for m in messages] == [
        "text",
        "binary",
        "text",
    ]
    for message in messages:
        assert message.parent is not None
        assert message.parent.span_id == span.context.span_id
    operation = recorder.one("handle")
    assert operation.parent is not None
    assert operation.parent.span_id == messages[0].context.span_id
    assert messages[0].end_time >= operation.end_time  # type: ignore[operator]
    assert messages[2].status.status_code is StatusCode.ERROR
    assert (messages[2].attributes or {})["error.type"] == f"{__name__}.MessageFailed"
    assert span.status.status_code is StatusCode.ERROR


# -- metrics and the access log ----------------------------------------------
async def scrape(port: int) -> dict[str, list[typing.Any]]:
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        client.close()
    found: dict[str, list[typing.Any]] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(
    samples: dict[str, list[typing.Any]], name: str, **labels: str
) -> float | None:
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


async def debug_page(port: int) -> dict[str, typing.Any]:
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/divak?format=json")
    finally:
        client.close()
    return json.loads(response.body)["service"]  # type: ignore[no-any-return]


def test_metrics_count_connections_messages_and_durations() -> None:
    recorder = SpanRecorder()
    app = App(recorder, divak_debug_page="/divak")
    route = "/both/{room}"

    async def go() -> tuple[dict[str, list[typing.Any]], ...]:
        port = listen(app)
        first = await connect(port, "/both/a")
        second = await connect(port, "/both/b")
        for connection, texts in ((first, "xyz"), (second, "q")):
            for text in texts:
                await connection.write_message(text)
                assert await connection.read_message() == text
        both_open = await scrape(port)
        # The debug page counts them as connections, not requests in flight.
        service = await debug_page(port)
        assert service["websocket_connections"] == 2
        assert service["requests_in_flight"] == 1  # the page's own request
        first.close(1000)
        await wait_for_span(app, recorder, "GET /both/{room}")
        one_open = await scrape(port)
        assert (await debug_page(port))["websocket_connections"] == 1
        second.close(1000)
        return both_open, one_open

    both_open, one_open = run(go())
    active = "divak_websocket_connections_active"
    messages = "divak_websocket_messages_total"
    duration = "divak_websocket_connection_duration_seconds"
    assert value(both_open, active, http_route=route) == 2
    assert value(both_open, messages, http_route=route, direction="received") == 4
    assert value(both_open, messages, http_route=route, direction="sent") == 4
    assert value(both_open, f"{duration}_count", http_route=route) is None
    assert value(one_open, active, http_route=route) == 1
    assert value(one_open, f"{duration}_count", http_route=route) == 1
    assert (value(one_open, f"{duration}_sum", http_route=route) or 0) > 0
    # The upgrade request is an HTTP request like any other, done at the 101.
    assert (
        value(
            both_open,
            "http_server_request_duration_seconds_count",
            http_route=route,
            http_response_status_code="101",
        )
        == 2
    )


@pytest.mark.parametrize("log_format", ["divak", "combined"])
def test_the_access_log_writes_a_second_line_at_the_close(
    log_format: str, log_records: list[logging.LogRecord]
) -> None:
    recorder = SpanRecorder()
    app = App(recorder, access_log_format=log_format)

    async def go() -> None:
        port = listen(app)
        connection = await connect(port, "/plain/lobby?token=secret")
        for text in ("a", "b"):
            await connection.write_message(text)
            assert await connection.read_message() == text
        connection.close(1001)
        await wait_for_span(app, recorder, "GET /plain/{room}")

    run(go())
    span = recorder.one("GET /plain/{room}")
    lines = [
        r
        for r in log_records
        if r.name == "tornado.access" and "/plain/lobby" in r.getMessage()
    ]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    upgrade, close = lines
    assert " 101 " in upgrade.getMessage()
    text = close.getMessage()
    assert "websocket closed 1001" in text and "2 received, 2 sent" in text
    assert "secret" not in text  # the URI is redacted like the request line's
    assert close.levelno == logging.INFO
    assert close.otelTraceID == f"{span.context.trace_id:032x}"
    fields = close.__dict__
    assert fields["divak.websocket.close_code"] == 1001
    assert fields["divak.websocket.messages_received"] == 2
    assert fields["divak.websocket.messages_sent"] == 2
    assert fields["http.response.status_code"] == 101
    assert fields["duration_ms"] > 0


def test_an_unsampled_connection_has_metrics_and_a_close_line_but_no_span(
    log_records: list[logging.LogRecord],
) -> None:
    recorder = SpanRecorder()
    app = App(recorder)
    app.set_divak_sample_probability(0.0)

    async def go() -> dict[str, list[typing.Any]]:
        port = listen(app)
        connection = await connect(port, "/tracked/lobby")
        await connection.write_message("op")
        assert await connection.read_message() == "op"
        connection.close(1000)
        deadline = time.monotonic() + 10
        while not any("websocket closed" in r.getMessage() for r in log_records):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        return await scrape(port)

    samples = run(go())
    route = "/tracked/{room}"
    assert value(samples, "divak_websocket_connections_active", http_route=route) == 0
    assert (
        value(
            samples,
            "divak_websocket_messages_total",
            http_route=route,
            direction="sent",
        )
        == 1
    )
    assert not recorder.spans


# -- the drain ---------------------------------------------------------------
def test_a_websocket_opened_during_the_drain_closes_with_1001_after_its_handshake() -> (
    None
):
    # An upgrade pipelined behind a slow request arrived before the drain
    # and is answered during it: the handshake completes (no
    # "Connection: close" on the 101), then the connection closes with 1001.
    recorder = SpanRecorder()
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(web.RequestHandler):
        async def get(self) -> None:
            started.set()
            await release.wait()
            self.write("slow")

    class DrainApp(divak.Recorder, divak.Application):
        pass

    app = DrainApp([(r"/slow", Slow), (r"/plain/(?P<room>\w+)", Plain)])
    app.add_divak_reporter(recorder)
    key = base64.b64encode(os.urandom(16)).decode()

    async def go() -> bytes:
        server = DrainingHTTPServer(app)
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n"
            b"GET /plain/late HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
        )
        await asyncio.wait_for(started.wait(), 10)
        server.start_draining()
        assert app.divak_websockets.close_all() == 0
        release.set()
        received = b""
        while len(received.partition(b"\r\n\r\nslow")[2].partition(b"\r\n\r\n")[2]) < 4:
            chunk = await asyncio.wait_for(reader.read(65536), 20)
            assert chunk, received  # the close frame comes before the end
            received += chunk
        writer.close()  # without answering the close frame
        await wait_for_span(app, recorder, "GET /plain/{room}")
        await server.close_all_connections()
        return received

    received = run(go())
    slow, _, rest = received.partition(b"slow")
    assert slow.startswith(b"HTTP/1.1 200")
    head, _, frames = rest.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"connection: upgrade" in head.lower()
    assert frames[0] == 0x88  # FIN + close
    assert struct.unpack(">H", frames[2:4])[0] == 1001
    span = recorder.one("GET /plain/{room}")
    assert (span.attributes or {})["divak.websocket.close_code"] == 1001


class Output:
    """A subprocess's output lines, read in a thread (the pipe never fills)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,))
        self._thread.daemon = True
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        self._thread.join(0.5)
        return "".join(self.lines)


SERVICE = ["-m", "tests.services.websocket_service"]


def test_sigterm_closes_websockets_with_1001_and_exports_their_spans(
    collector: typing.Any,
) -> None:
    process, port = start_service(
        SERVICE, env={"COLLECTOR_URL": collector.url, "SHUTDOWN_LIMIT": "10"}
    )
    output = Output(process)

    async def go() -> tuple[int | None, str | None]:
        connection = await connect(port, "/ws/lobby")
        await connection.write_message("hello")
        assert await connection.read_message() == "hello"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(connection.read_message(), 20) is None
        return connection.close_code, connection.close_reason

    try:
        code, reason = run(go())
        assert process.wait(20) == 0, output.text
    finally:
        process.kill()
    assert code == 1001 and reason == "server shutting down"
    spans = collector.wait_for(lambda s: any(x["name"] == "GET /ws/{room}" for x in s))
    (span,) = [s for s in spans if s["name"] == "GET /ws/{room}"]
    tags = span["tags"]
    assert tags["http.response.status_code"] == "101"
    assert tags["divak.websocket.close_code"] == "1001"
    assert tags["divak.websocket.messages_received"] == "1"
    assert tags["divak.websocket.messages_sent"] == "1"
    assert "closing 1 WebSocket connection(s)" in output.text
    assert "websocket closed with 1001" in output.text


def test_a_client_that_never_answers_the_close_is_cut_off_at_the_limit(
    collector: typing.Any,
) -> None:
    process, port = start_service(
        SERVICE, env={"COLLECTOR_URL": collector.url, "SHUTDOWN_LIMIT": "1"}
    )
    output = Output(process)

    async def go() -> bytes:
        reader, writer = await raw_handshake(port, "/ws/lobby")
        process.send_signal(signal.SIGTERM)
        # Read the close frame, never answer it; the server cuts us off.
        received = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        return received

    try:
        received = run(go())
        assert process.wait(20) == 0, output.text
    finally:
        process.kill()
    assert received[0] == 0x88  # FIN + close
    assert struct.unpack(">H", received[2:4])[0] == 1001
    spans = collector.wait_for(lambda s: any(x["name"] == "GET /ws/{room}" for x in s))
    (span,) = [s for s in spans if s["name"] == "GET /ws/{room}"]
    assert span["tags"]["divak.websocket.close_code"] == "1001"
    assert "1 WebSocket connection(s) open: cutting them off" in output.text
