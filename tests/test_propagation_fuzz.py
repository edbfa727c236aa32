"""Property-based test: arbitrary header bytes over a real socket never hurt.

For any value of the propagation headers a divak service reads, the
service answers without a 5xx, logs no exception, and every propagated
header it sends downstream is valid by its specification.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import threading
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado import httputil, web

import divak
from divak.testing import RecordingLogHandler, SpanRecorder

HEADER_NAMES = [
    "traceparent",
    "tracestate",
    "b3",
    "X-B3-TraceId",
    "X-B3-SpanId",
    "X-B3-ParentSpanId",
    "X-B3-Sampled",
    "X-B3-Flags",
    "Request-Id",
    "baggage",
]

VALID = re.compile(r"(?!0{32})[0-9a-f]{32}")
VALID_SPAN = re.compile(r"(?!0{16})[0-9a-f]{16}")
TRACESTATE_MEMBER = re.compile(
    r"[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}"
    r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
BAGGAGE_MEMBER = re.compile(
    r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
)


def check_downstream(headers: httputil.HTTPHeaders) -> None:
    """Assert every propagated header follows its specification."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00" and VALID.fullmatch(trace_id)
    assert VALID_SPAN.fullmatch(span_id) and flags in ("00", "01", "02", "03")
    if "tracestate" in headers:
        members = headers["tracestate"].split(",")
        assert 0 < len(members) <= 32
        assert all(TRACESTATE_MEMBER.fullmatch(m) for m in members)
        keys = [m.partition("=")[0] for m in members]
        assert len(keys) == len(set(keys))
    assert headers["X-B3-TraceId"] == trace_id
    assert headers["X-B3-SpanId"] == span_id
    # OpenTelemetry's propagators specification: B3 inject MUST NOT
    # propagate X-B3-ParentSpanId.
    assert "X-B3-ParentSpanId" not in headers
    if "X-B3-Flags" in headers:
        assert headers["X-B3-Flags"] == "1" and "X-B3-Sampled" not in headers
    elif "X-B3-Sampled" in headers:
        assert headers["X-B3-Sampled"] in ("0", "1")
    assert "b3" not in headers
    request_id = headers["Request-Id"]
    assert 1 <= len(request_id) <= 128
    assert all("!" <= ch <= "~" for ch in request_id)
    if "baggage" in headers:
        assert all(BAGGAGE_MEMBER.fullmatch(m) for m in headers["baggage"].split(","))


class Downstream(web.RequestHandler):
    def initialize(self, seen: dict) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen[self.get_query_argument("n")] = httputil.HTTPHeaders(
            self.request.headers
        )


class Calling(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        n = self.get_query_argument("n")
        await self.send_request(f"{self.application.settings['downstream']}?n={n}")
        self.write("ok")


class App(divak.Recorder, divak.Application):
    def __init__(self, downstream: str) -> None:
        super().__init__(
            [("/call", Calling)],
            service="fuzzed",
            downstream=downstream,
            divak_capture_request_headers=HEADER_NAMES,
        )
        self.add_divak_reporter(SpanRecorder())
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.ZipkinPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())
        self.add_divak_propagator(divak.BaggagePropagation())


class Servers:
    """Both servers in a thread of their own, so the test can block on sockets."""

    def __init__(self) -> None:
        self.seen: dict[str, httputil.HTTPHeaders] = {}
        self.port = 0
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            down = web.Application([("/", Downstream, {"seen": self.seen})])
            down_server = down.listen(0, "127.0.0.1")
            down_port = next(iter(down_server._sockets.values())).getsockname()[1]
            app = App(f"http://127.0.0.1:{down_port}/")
            server = app.listen(0, "127.0.0.1")
            self.port = next(iter(server._sockets.values())).getsockname()[1]
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, n: str, headers: list[tuple[str, bytes]]) -> int:
        raw = [f"GET /call?n={n} HTTP/1.1\r\nHost: fuzz\r\n".encode()]
        raw += [name.encode() + b": " + value + b"\r\n" for name, value in headers]
        raw.append(b"Connection: close\r\n\r\n")
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"".join(raw))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "request-id":
                # The correlation id echoed back is always a valid one.
                value = value.strip()
                assert 1 <= len(value) <= 128
                assert all("!" <= ch <= "~" for ch in value)
        return int(head[0].split(" ", 2)[1])


@pytest.fixture(scope="module")
def servers() -> typing.Iterator[Servers]:
    running = Servers()
    yield running
    running.stop()


# Values: raw bytes (no CR/LF, which would end the header line), and text
# close to the real formats, which reaches deeper into the parsers.
NEAR = "0123456789abcdefABCDEF-=,;@ d\t%+*/x"
values = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.text(NEAR, max_size=120).map(str.encode),
    st.builds(
        lambda t, s, f, tail: f"{t}-{s}-{f}{tail}".encode(),
        st.text("0123456789abcdef", min_size=15, max_size=33),
        st.text("0123456789abcdef", min_size=15, max_size=17),
        st.sampled_from(["0", "1", "d", "01", "00", "ff", "x"]),
        st.text(NEAR, max_size=20),
    ),
)
header_sets = st.lists(
    st.tuples(st.sampled_from(HEADER_NAMES), values), min_size=1, max_size=6
)
counter = itertools.count()


@settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(headers=header_sets)
def test_arbitrary_propagation_headers_never_hurt(servers, headers):
    handler = RecordingLogHandler(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        n = str(next(counter))
        status = servers.request(n, headers)
    finally:
        root.removeHandler(handler)
    assert status < 500
    assert not [r for r in handler.records if r.exc_info or r.levelno >= logging.ERROR]
    if status == 200:
        check_downstream(servers.seen[n])
    else:
        # Only an HTTP-level rejection of the header bytes themselves.
        assert status == 400 and n not in servers.seen
