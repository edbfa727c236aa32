"""The W3C Trace Context test suite's tracestate cases, over real sockets.

Each row is one request to a real divak service, carrying
``traceparent: 00-12345678901234567890123456789012-1234567890123456-00``
and the row's ``tracestate`` header lines; the service calls a second real
server with ``send_request``, which records the headers it receives.  The
rows follow ``test/test.py`` of w3c/trace-context at STRICT_LEVEL 2, with
the Level 2 key grammar (``@`` is an ordinary key character, keys are at
most 256 characters in all).
"""

from __future__ import annotations

import pytest
from tornado import httpclient, httputil, web

import divak
from divak.testing import SpanRecorder
from tests.conftest import listen, run

TRACE = "12345678901234567890123456789012"
TRACEPARENT = f"00-{TRACE}-1234567890123456-00"


class Downstream(web.RequestHandler):
    def initialize(self, seen: list[httputil.HTTPHeaders]) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(self.request.headers)
        self.write("ok")


class Calling(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        response = await self.send_request(self.settings["downstream"])
        self.write(response.body)


class Service(divak.Recorder, divak.Application):
    def __init__(self, downstream: str) -> None:
        super().__init__([("/call", Calling)], service="w3c", downstream=downstream)
        self.add_divak_reporter(SpanRecorder())
        self.add_divak_propagator(divak.TraceContextPropagation())


def forward(tracestate: list[str]) -> httputil.HTTPHeaders:
    """Send one request with *tracestate* lines; return what downstream got."""

    async def scenario() -> httputil.HTTPHeaders:
        seen: list[httputil.HTTPHeaders] = []
        downstream = web.Application([("/", Downstream, {"seen": seen})])
        service = Service(f"http://127.0.0.1:{listen(downstream)}/")
        port = listen(service)
        headers = httputil.HTTPHeaders({"traceparent": TRACEPARENT})
        for line in tracestate:
            headers.add("tracestate", line)
        try:
            response = await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/call", headers=headers
            )
            assert response.code == 200
        finally:
            service._test_server.stop()
            downstream._test_server.stop()
            service.divak_shutdown()
        (received,) = seen
        return received

    return run(scenario())


def members(first: int, last: int) -> str:
    return ",".join(f"bar{i:02d}={i:02d}" for i in range(first, last + 1))


THIRTY_TWO = [members(1, 10), members(11, 20), members(21, 30), members(31, 32)]
THIRTY_THREE = [*THIRTY_TWO[:3], members(31, 33)]

# (rule, incoming tracestate lines, outgoing tracestate or None)
ROWS = [
    ("key may end with @", ["foo@=1,bar=2"], "foo@=1,bar=2"),
    ("key may not start with @", ["@foo=1,bar=2"], None),
    ("key may hold @@", ["foo@@bar=1,bar=2"], "foo@@bar=1,bar=2"),
    ("key may hold several @", ["foo@bar@baz=1,bar=2"], "foo@bar@baz=1,bar=2"),
    ("32 members over 4 headers kept in order", THIRTY_TWO, ",".join(THIRTY_TWO)),
    ("33 members discard the header", THIRTY_THREE, None),
    ("key of 256 characters", ["foo=1", "z" * 256 + "=1"], "foo=1," + "z" * 256 + "=1"),
    ("key of 257 characters discards the header", ["foo=1", "z" * 257 + "=1"], None),
    (
        "241 characters before @ and 14 after",
        ["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"],
        "foo=1," + "t" * 241 + "@" + "v" * 14 + "=1",
    ),
    (
        "242 characters before @ (Level 2: no tenant limit)",
        ["foo=1", "t" * 242 + "@v=1"],
        "foo=1," + "t" * 242 + "@v=1",
    ),
    (
        "15 characters after @ (Level 2: no system limit)",
        ["foo=1", "t@" + "v" * 15 + "=1"],
        "foo=1,t@" + "v" * 15 + "=1",
    ),
    ("value with = discards the header", ["foo=bar=baz"], None),
    ("empty value discards the header", ["foo=,bar=3"], None),
    ("duplicate key, same value", ["foo=1,foo=1"], None),
    ("duplicate key, other value", ["foo=1,foo=2"], None),
    ("duplicate key across headers, same value", ["foo=1", "foo=1"], None),
    ("duplicate key across headers, other value", ["foo=1", "foo=2"], None),
]


@pytest.mark.parametrize(
    ("rule", "incoming", "outgoing"), ROWS, ids=[row[0] for row in ROWS]
)
def test_tracestate_sent_downstream(
    rule: str, incoming: list[str], outgoing: str | None
) -> None:
    received = forward(incoming)
    # The trace is continued whatever the tracestate holds.
    assert received["traceparent"].split("-")[1] == TRACE
    if outgoing is None:
        assert "tracestate" not in received
    else:
        assert ",".join(received.get_list("tracestate")) == outgoing


def test_valid_members_are_forwarded_unchanged_without_a_bad_one() -> None:
    """Control for the discard rows: the same members without the bad one pass."""
    assert forward(["bar=2"])["tracestate"] == "bar=2"
    assert forward(["foo=1", "bar=3"]).get_list("tracestate") == ["foo=1,bar=3"]
