"""Propagation to the letter of the specs: one table row per spec rule.

Rows name the rule they check: ``W3C-TC §...`` is W3C Trace Context Level
2, ``B3 ...`` is openzipkin/b3-propagation, ``W3C-BAGGAGE ...`` is W3C
Baggage.  The end-to-end tests at the bottom run real servers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import typing

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import sampling
from tornado import httpclient, httputil, web

import divak
from divak import propagation
from tests.conftest import flush, listen, run
from tests.zipkin_schema import validate_spans

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TP = f"00-{TRACE}-{SPAN}-01"


def headers(**values: str | list[str]) -> dict[str, list[str]]:
    """A carrier as an HTTP server hands it over: header lines combined with ","."""
    return {
        name.replace("_", "-"): [",".join(value) if isinstance(value, list) else value]
        for name, value in values.items()
    }


def remote(context) -> trace.SpanContext:
    return trace.get_current_span(context).get_span_context()


# -- W3C Trace Context: traceparent ---------------------------------------

TRACEPARENT_ROWS = [
    # (rule, header, expected trace id or None, expected flags)
    ("W3C-TC 3.2.2: version 00 sampled", TP, TRACE, 0x01),
    ("W3C-TC 3.2.2: version 00 not sampled", f"00-{TRACE}-{SPAN}-00", TRACE, 0),
    ("W3C-TC 3.2.2.5: random-trace-id flag kept", f"00-{TRACE}-{SPAN}-03", TRACE, 3),
    ("W3C-TC 3.2.2.5: other flags set to zero", f"00-{TRACE}-{SPAN}-ff", TRACE, 3),
    ("W3C-TC 3.2.2: HEXDIGLC, upper-case trace-id", f"00-{TRACE.upper()}-{SPAN}-01",
     None, None),
    ("W3C-TC 3.2.2: HEXDIGLC, upper-case parent-id", f"00-{TRACE}-{SPAN.upper()}-01",
     None, None),
    ("W3C-TC 3.2.2: HEXDIGLC, upper-case version", f"0A-{TRACE}-{SPAN}-01",
     None, None),
    ("W3C-TC 3.2.2.3: all-zero trace-id invalid", f"00-{'0' * 32}-{SPAN}-01",
     None, None),
    ("W3C-TC 3.2.2.4: all-zero parent-id invalid", f"00-{TRACE}-{'0' * 16}-01",
     None, None),
    ("W3C-TC 3.2.2.1: version ff invalid", f"ff-{TRACE}-{SPAN}-01", None, None),
    ("W3C-TC 3.2.2: version 00 with trailing data invalid", f"{TP}-extra",
     None, None),
    ("W3C-TC 3.2.2: version 00 with trailing dot invalid", f"{TP}.", None, None),
    ("W3C-TC 3.2.4: higher version parsed by position", f"cc-{TRACE}-{SPAN}-01",
     TRACE, 1),
    ("W3C-TC 3.2.4: higher version with more fields", f"cc-{TRACE}-{SPAN}-01-what",
     TRACE, 1),
    ("W3C-TC 3.2.4: higher version, flags not followed by dash",
     f"cc-{TRACE}-{SPAN}-01.what", None, None),
    ("W3C-TC 3.2.4: version not 2 hex digits", f"0-{TRACE}-{SPAN}-01", None, None),
    ("W3C-TC 3.2.4: version of 3 digits", f"000-{TRACE}-{SPAN}-01", None, None),
    ("W3C-TC 3.2.2.3: trace-id too short", f"00-{TRACE[:-1]}-{SPAN}-01", None, None),
    ("W3C-TC 3.2.2.4: parent-id too long", f"00-{TRACE}-{SPAN}0-01", None, None),
    ("W3C-TC 3.2.2.5: flags too short", f"00-{TRACE}-{SPAN}-1", None, None),
    ("W3C-TC 3.2.2.5: flags not hex", f"00-{TRACE}-{SPAN}-.0", None, None),
    ("W3C-TC 3.2: OWS around the value", f" \t{TP}\t ", TRACE, 1),
    ("W3C-TC 3.2: two traceparent headers invalid", [TP, f"00-{SPAN * 2}-{SPAN}-01"],
     None, None),
]


@pytest.mark.parametrize(
    ("rule", "value", "trace_id", "flags"),
    TRACEPARENT_ROWS,
    ids=[row[0] for row in TRACEPARENT_ROWS],
)
def test_traceparent(rule, value, trace_id, flags):
    context = divak.TraceContextPropagation().extract(
        headers(traceparent=value, tracestate="congo=t61rcWkgMzE")
    )
    span_context = remote(context)
    if trace_id is None:
        # Invalid traceparent: restart the trace, tracestate dropped with it.
        assert not span_context.is_valid
        return
    assert trace.format_trace_id(span_context.trace_id) == trace_id
    assert trace.format_span_id(span_context.span_id) == SPAN
    assert span_context.trace_flags == flags
    assert span_context.trace_state.to_header() == "congo=t61rcWkgMzE"
    carrier: dict[str, str] = {}
    divak.TraceContextPropagation().inject(carrier, context)
    # Re-emitted as the highest version known, 00.
    assert carrier["traceparent"] == f"00-{trace_id}-{SPAN}-{flags:02x}"


# -- W3C Trace Context: tracestate ----------------------------------------

SHORT = [f"k{i}=v" for i in range(32)]
# A member of 513 characters: the longest key and the longest value.
LONG = ["l" * 250 + f"{i:06d}=" + "v" * 256 for i in range(32)]
TRACESTATE_ROWS = [
    ("W3C-TC 3.3.1: list of members", ["a=1,b=2"], "a=1,b=2"),
    ("W3C-TC 3.3.1: multiple headers combined in order", ["a=1,b=2", "c=3"],
     "a=1,b=2,c=3"),
    ("W3C-TC 3.3.1: empty header accepted", [""], ""),
    ("W3C-TC 3.3.1: empty members allowed", ["a=1,, ,b=2"], "a=1,b=2"),
    ("W3C-TC 3.3.1: OWS around members ignored", ["a=1 \t, \tb=2"], "a=1,b=2"),
    ("W3C-TC 3.3.1.3.1: Level 2 key may start with a digit", ["1vendor=x"],
     "1vendor=x"),
    ("W3C-TC 3.3.1.3.1: Level 2 key with @ anywhere", ["a@b@c=1,tenant@sys=2"],
     "a@b@c=1,tenant@sys=2"),
    ("W3C-TC 3.3.1.3.1: key may end with @", ["foo@=1"], "foo@=1"),
    # The W3C test suite discards the whole header for one invalid member
    # (test_tracestate_key_illegal_*, test_tracestate_value_illegal_*).
    ("W3C-TC 3.3.1.3.1: key must not start with @, header discarded",
     ["@foo=1,b=2"], ""),
    ("W3C-TC 3.3.1.3.1: upper-case key, header discarded", ["FOO=1,b=2"], ""),
    ("W3C-TC 3.3.1.3.1: key longer than 256, header discarded",
     ["k" * 257 + "=1,b=2"], ""),
    ("W3C-TC 3.3.1.3.2: value keeps leading spaces", ["a= x"], "a= x"),
    ("W3C-TC 3.3.1.3.2: value of 256 characters", ["a=" + "v" * 256],
     "a=" + "v" * 256),
    ("W3C-TC 3.3.1.3.2: value of 257 characters, header discarded",
     ["a=" + "v" * 257 + ",b=2"], ""),
    ("W3C-TC 3.3.1.3.2: empty value, header discarded", ["a=,b=2"], ""),
    ("W3C-TC 3.3.1.3.2: value with =, header discarded", ["a=x=y,b=2"], ""),
    ("W3C-TC 3.3.1.3: member without =, header discarded", ["a=1,garbage,b=2"], ""),
    ("W3C-TC 3.3.1.4: duplicate key, header discarded", ["a=1,b=2,a=3"], ""),
    ("W3C-TC 3.3.1.4: duplicate across headers, header discarded", ["a=1", "a=2"],
     ""),
    ("W3C-TC 3.3.1.5: 32 members kept", [",".join(SHORT)], ",".join(SHORT)),
    ("W3C-TC 3.3.1.5: 33 members, header discarded",
     [",".join(SHORT) + ",k32=v"], ""),
    ("W3C-TC 3.3.1.5: over 8192 characters, long members removed from the end",
     [",".join(LONG[:1] + SHORT[1:16] + LONG[16:])],
     ",".join(LONG[:1] + SHORT[1:16] + LONG[16:30])),
    ("W3C-TC 3.3.1.5: long members removed before short ones",
     [",".join(LONG[:17] + SHORT[17:])],
     ",".join(LONG[:15] + SHORT[17:])),
]


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    TRACESTATE_ROWS,
    ids=[row[0] for row in TRACESTATE_ROWS],
)
def test_tracestate(rule, values, expected):
    context = divak.TraceContextPropagation().extract(
        headers(traceparent=TP, tracestate=values)
    )
    assert remote(context).is_valid  # tracestate never affects traceparent
    assert remote(context).trace_state.to_header() == expected
    carrier: dict[str, str] = {}
    divak.TraceContextPropagation().inject(carrier, context)
    assert carrier.get("tracestate", "") == expected


def test_tracestate_needs_a_valid_traceparent():
    """W3C-TC 3.3: a tracestate without a valid traceparent is not parsed."""
    context = divak.TraceContextPropagation().extract(
        headers(traceparent="garbage", tracestate="a=1")
    )
    carrier: dict[str, str] = {}
    divak.TraceContextPropagation().inject(carrier, context)
    assert carrier == {}


# -- B3 -------------------------------------------------------------------

B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"

B3_ROWS = [
    # (rule, headers, trace id, sampled, debug, deferred, decision)
    ("B3 single: accept", {"b3": f"{B3_TRACE}-{B3_SPAN}-1"}, B3_TRACE, True, False,
     False, None),
    ("B3 single: deny", {"b3": f"{B3_TRACE}-{B3_SPAN}-0"}, B3_TRACE, False, False,
     False, None),
    ("B3 single: debug d implies accept", {"b3": f"{B3_TRACE}-{B3_SPAN}-d"},
     B3_TRACE, True, True, False, None),
    ("B3 single: defer is absence of the sampling field",
     {"b3": f"{B3_TRACE}-{B3_SPAN}"}, B3_TRACE, False, False, True, None),
    ("B3 single: with ParentSpanId", {"b3": f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}"},
     B3_TRACE, True, False, False, None),
    ("B3 single: lone deny b3: 0", {"b3": "0"}, None, None, False, False, False),
    ("B3 single: lone accept b3: 1", {"b3": "1"}, None, None, False, False, True),
    ("B3 single: lone debug b3: d", {"b3": "d"}, None, None, True, False, True),
    ("B3 single: 64-bit trace id left-padded", {"b3": f"{B3_TRACE[16:]}-{B3_SPAN}-1"},
     "0" * 16 + B3_TRACE[16:], True, False, False, None),
    ("B3 single: takes precedence over multi",
     {"b3": f"{B3_TRACE}-{B3_SPAN}-1", "X-B3-TraceId": B3_SPAN * 2,
      "X-B3-SpanId": B3_PARENT, "X-B3-Sampled": "0"},
     B3_TRACE, True, False, False, None),
    ("B3 single: invalid sampling state", {"b3": f"{B3_TRACE}-{B3_SPAN}-x"},
     None, None, False, False, None),
    ("B3 single: invalid ParentSpanId", {"b3": f"{B3_TRACE}-{B3_SPAN}-1-xyz"},
     None, None, False, False, None),
    ("B3 single: too many fields", {"b3": f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}-1"},
     None, None, False, False, None),
    ("B3: lower-hex ids only", {"b3": f"{B3_TRACE.upper()}-{B3_SPAN}-1"},
     None, None, False, False, None),
    ("B3: all-zero trace id invalid", {"b3": f"{'0' * 32}-{B3_SPAN}-1"},
     None, None, False, False, None),
    ("B3: trace id of 20 digits invalid", {"b3": f"{B3_TRACE[:20]}-{B3_SPAN}-1"},
     None, None, False, False, None),
    ("B3 multi: accept", {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN,
                          "X-B3-Sampled": "1"}, B3_TRACE, True, False, False, None),
    ("B3 multi: deny", {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN,
                        "X-B3-Sampled": "0"}, B3_TRACE, False, False, False, None),
    ("B3 multi: lenient true", {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN,
                                "X-B3-Sampled": "true"},
     B3_TRACE, True, False, False, None),
    ("B3 multi: defer when X-B3-Sampled is absent",
     {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN,
      "X-B3-ParentSpanId": B3_PARENT}, B3_TRACE, False, False, True, None),
    ("B3 multi: debug is X-B3-Flags: 1",
     {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN, "X-B3-Flags": "1"},
     B3_TRACE, True, True, False, None),
    ("B3 multi: 64-bit trace id left-padded",
     {"X-B3-TraceId": B3_TRACE[16:], "X-B3-SpanId": B3_SPAN, "X-B3-Sampled": "1"},
     "0" * 16 + B3_TRACE[16:], True, False, False, None),
    ("B3 multi: TraceId and SpanId required",
     {"X-B3-TraceId": B3_TRACE, "X-B3-Sampled": "1"}, None, None, False, False, True),
    ("B3 multi: deny without ids", {"X-B3-Sampled": "0"}, None, None, False, False,
     False),
]


@pytest.mark.parametrize(
    ("rule", "values", "trace_id", "sampled", "debug", "deferred", "decision"),
    B3_ROWS,
    ids=[row[0] for row in B3_ROWS],
)
def test_b3_extract(rule, values, trace_id, sampled, debug, deferred, decision):
    carrier = httputil.HTTPHeaders(values)
    context = divak.ZipkinPropagation().extract(carrier)
    span_context = remote(context)
    if trace_id is None:
        assert not span_context.is_valid
    else:
        assert trace.format_trace_id(span_context.trace_id) == trace_id
        assert trace.format_span_id(span_context.span_id) == B3_SPAN
        assert span_context.trace_flags.sampled is sampled
    assert bool(context.get(propagation.B3_DEBUG_KEY)) is debug
    assert bool(context.get(propagation.B3_DEFERRED_KEY)) is deferred
    assert context.get(propagation.B3_DECISION_KEY) is decision


def _child_headers(values: dict[str, str], single: bool, sampler=None) -> dict:
    """Extract *values*, start a local span as divak does, inject downstream."""
    from opentelemetry.sdk.trace import TracerProvider

    zipkin = divak.ZipkinPropagation(single_header=single)
    context = zipkin.extract(httputil.HTTPHeaders(values))
    provider = TracerProvider(
        sampler=propagation.PropagatedSampler(
            sampler or sampling.ParentBased(sampling.ALWAYS_ON)
        )
    )
    tracer = provider.get_tracer("test")
    server = tracer.start_span("server", context=context)
    inner = trace.set_span_in_context(server, context)
    client = tracer.start_span("client", context=inner)
    carrier: dict[str, str] = {}
    zipkin.inject(carrier, trace.set_span_in_context(client, inner))
    carrier["_server"] = trace.format_span_id(server.get_span_context().span_id)
    carrier["_client"] = trace.format_span_id(client.get_span_context().span_id)
    return carrier


B3_INJECT_ROWS = [
    # (rule, incoming, local sampler, single, expected headers besides ids)
    ("B3 multi: accept sent as X-B3-Sampled: 1",
     {"b3": f"{B3_TRACE}-{B3_SPAN}-1"}, None, False, {"x-b3-sampled": "1"}),
    ("B3 multi: deny sent as X-B3-Sampled: 0",
     {"b3": f"{B3_TRACE}-{B3_SPAN}-0"}, None, False, {"x-b3-sampled": "0"}),
    ("B3 multi: debug sent as X-B3-Flags: 1 without X-B3-Sampled",
     {"b3": f"{B3_TRACE}-{B3_SPAN}-d"}, sampling.ALWAYS_OFF, False,
     {"x-b3-flags": "1"}),
    ("B3 defer: the local sampler decides (accept)",
     {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN}, None, False,
     {"x-b3-sampled": "1"}),
    ("B3 defer: a local deny is sent on still deferred, never X-B3-Sampled: 0",
     {"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN},
     sampling.ParentBased(sampling.ALWAYS_OFF), False, {}),
    ("B3 single: accept", {"b3": f"{B3_TRACE}-{B3_SPAN}-1"}, None, True, "1"),
    ("B3 single: debug sent as d", {"b3": f"{B3_TRACE}-{B3_SPAN}-d"}, None, True,
     "d"),
    ("B3 single: defer sent without sampling state",
     {"b3": f"{B3_TRACE}-{B3_SPAN}"}, sampling.ParentBased(sampling.ALWAYS_OFF),
     True, None),
]


@pytest.mark.parametrize(
    ("rule", "incoming", "sampler", "single", "expected"),
    B3_INJECT_ROWS,
    ids=[row[0] for row in B3_INJECT_ROWS],
)
def test_b3_inject(rule, incoming, sampler, single, expected):
    carrier = _child_headers(incoming, single, sampler)
    server, client = carrier.pop("_server"), carrier.pop("_client")
    # OpenTelemetry's propagators specification, B3 inject: MUST NOT
    # propagate X-B3-ParentSpanId (nor the single header's parent field):
    # the receiver's span is a new one, whose parent is the client span sent.
    assert server != client
    if single:
        fields = carrier["b3"].split("-")
        assert fields[:2] == [B3_TRACE, client]
        assert fields[2:] == ([] if expected is None else [expected])
        return
    assert carrier.pop("x-b3-traceid") == B3_TRACE
    assert carrier.pop("x-b3-spanid") == client
    assert carrier == expected  # no x-b3-parentspanid, whatever the state


def test_b3_lone_deny_drops_the_new_trace():
    """B3 single: ``b3: 0`` alone denies sampling of the new trace."""
    carrier = _child_headers({"b3": "0"}, False)
    assert carrier["x-b3-sampled"] == "0"


def test_b3_defer_uses_the_trace_id_for_the_ratio_sampler():
    """B3 defer: a deferred trace is decided from its trace id, consistently."""
    ratio = sampling.ParentBased(sampling.TraceIdRatioBased(0.5))
    low = "0" * 16 + "0000000000000001"
    high = "0" * 16 + "ffffffffffffffff"
    for trace_id, sampled in ((low, "1"), (high, None)):
        carrier = _child_headers(
            {"X-B3-TraceId": trace_id, "X-B3-SpanId": B3_SPAN}, False, ratio
        )
        assert carrier.get("x-b3-sampled") == sampled


# -- W3C Baggage ----------------------------------------------------------

BAGGAGE_ROWS = [
    ("W3C-BAGGAGE: list-members", ["a=1,b=2"], {"a": "1", "b": "2"}),
    ("W3C-BAGGAGE: multiple headers combined", ["a=1", "b=2"], {"a": "1", "b": "2"}),
    ("W3C-BAGGAGE: OWS trimmed around key and value", [" a = 1 , b=2"],
     {"a": "1", "b": "2"}),
    ("W3C-BAGGAGE: value is percent-encoded UTF-8", ["k=DF%2028%C3%A9"],
     {"k": "DF 28\u00e9"}),
    ("W3C-BAGGAGE: plus is not a space", ["k=a+b"], {"k": "a+b"}),
    ("W3C-BAGGAGE: value may contain =", ["k=a=b"], {"k": "a=b"}),
    ("W3C-BAGGAGE: properties accepted", ["k=v;p1;p2=x,b=2"], {"k": "v", "b": "2"}),
    ("W3C-BAGGAGE: invalid key dropped alone", ["bad key=1,b=2"], {"b": "2"}),
    ("W3C-BAGGAGE: invalid value dropped alone", ['k="q",b=2'], {"b": "2"}),
    ("W3C-BAGGAGE: invalid UTF-8 dropped alone", ["k=%ff,b=2"], {"b": "2"}),
    ("W3C-BAGGAGE: at least 64 members propagated",
     [",".join(f"k{i}=v" for i in range(70))],
     {f"k{i}": "v" for i in range(64)}),
    ("W3C-BAGGAGE: at least 8192 bytes propagated, whole members only",
     [",".join(f"k{i}={'v' * 1000}" for i in range(9))],
     {f"k{i}": "v" * 1000 for i in range(8)}),
]


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    BAGGAGE_ROWS,
    ids=[row[0] for row in BAGGAGE_ROWS],
)
def test_baggage(rule, values, expected):
    context = divak.BaggagePropagation().extract(headers(baggage=values))
    assert dict(baggage.get_all(context)) == expected
    carrier: dict[str, str] = {}
    divak.BaggagePropagation().inject(carrier, context)
    again = divak.BaggagePropagation().extract(carrier)
    assert dict(baggage.get_all(again)) == expected


def test_baggage_encodes_spaces_as_percent_20():
    """W3C-BAGGAGE: a value is URL (percent) encoded: a space is %20."""
    context = baggage.set_baggage("node", "DF 28")
    carrier: dict[str, str] = {}
    divak.BaggagePropagation().inject(carrier, context)
    assert carrier == {"baggage": "node=DF%2028"}


# -- Correlation id -------------------------------------------------------

REQUEST_ID_ROWS = [
    ("valid id kept", "abc-123", "abc-123"),
    ("128 characters kept", "a" * 128, "a" * 128),
    ("129 characters replaced", "a" * 129, None),
    ("space replaced", "a b", None),
    ("non-ASCII replaced", "caf\u00e9", None),
    ("empty replaced", "", None),
]


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    REQUEST_ID_ROWS,
    ids=[row[0] for row in REQUEST_ID_ROWS],
)
def test_request_id(rule, value, expected, log_records):
    context = divak.RequestIdPropagation("Correlation-ID").extract(
        {"Correlation-ID": value}
    )
    got = propagation.get_request_id(context)
    if expected is not None:
        assert got == expected
    else:
        assert got and got != value
        assert any(
            r.levelno == logging.DEBUG and "Correlation-ID" in r.getMessage()
            for r in log_records
        )


# -- Combined: first valid trace context wins -----------------------------


def test_first_valid_trace_context_wins_and_b3_state_does_not_leak():
    combined = propagation.Propagation(
        [divak.TraceContextPropagation(), divak.ZipkinPropagation()]
    )
    context = combined.extract(
        headers(traceparent=TP, b3=f"{B3_TRACE}-{B3_SPAN}-d")
    )
    assert trace.format_trace_id(remote(context).trace_id) == TRACE
    assert not context.get(propagation.B3_DEBUG_KEY)
    context = combined.extract(
        headers(traceparent="junk", b3=f"{B3_TRACE}-{B3_SPAN}-d")
    )
    assert trace.format_trace_id(remote(context).trace_id) == B3_TRACE
    assert context.get(propagation.B3_DEBUG_KEY)


# -- End to end over real sockets ------------------------------------------


class Downstream(web.RequestHandler):
    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(self.request.headers)
        self.write("ok")


class Calling(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        response = await self.send_request(self.application.settings["downstream"])
        self.write(response.body)


class Failing(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        raise web.HTTPError(418)


class App(divak.Recorder, divak.Application):
    def __init__(self, collector, propagators, **settings) -> None:
        super().__init__(
            [("/call", Calling), ("/fail", Failing)], service="svc", **settings
        )
        self.add_divak_reporter(divak.ZipkinReporter(collector.url))
        for propagator in propagators:
            self.add_divak_propagator(propagator)


def _serve(collector, propagators, **settings):
    seen: list[httputil.HTTPHeaders] = []
    downstream = web.Application([("/", Downstream, {"seen": seen})])
    down_port = listen(downstream)
    app = App(
        collector,
        propagators,
        downstream=f"http://127.0.0.1:{down_port}/",
        **settings,
    )
    return app, listen(app), seen


def test_b3_debug_propagates_and_is_exported_as_debug(collector):
    async def scenario():
        app, port, seen = _serve(collector, [divak.ZipkinPropagation()])
        response = await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/call",
            headers={"b3": f"{B3_TRACE}-{B3_SPAN}-d"},
        )
        assert response.code == 200
        await flush(app)
        return seen

    seen = run(scenario())
    assert seen[0]["X-B3-Flags"] == "1"
    assert "X-B3-Sampled" not in seen[0]
    spans = collector.wait_for(lambda s: len(s) >= 2)
    validate_spans(spans)
    assert {s["traceId"] for s in spans} == {B3_TRACE}
    assert all(s.get("debug") is True for s in spans)


def test_b3_defer_is_decided_locally_and_sent_on_deferred(collector):
    class Unsampled(App):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.divak_instrumentation.sampler = sampling.ParentBased(
                sampling.ALWAYS_OFF
            )

    async def scenario():
        seen: list = []
        downstream = web.Application([("/", Downstream, {"seen": seen})])
        url = f"http://127.0.0.1:{listen(downstream)}/"
        sampled = App(collector, [divak.ZipkinPropagation()], downstream=url)
        unsampled = Unsampled(collector, [divak.ZipkinPropagation()], downstream=url)
        for app in (sampled, unsampled):
            await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{listen(app)}/call",
                headers={"X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN},
            )
            await flush(app)
        return seen

    seen = run(scenario())
    assert seen[0]["X-B3-Sampled"] == "1"  # the local sampler said yes
    assert "X-B3-Sampled" not in seen[1]  # said no: still deferred downstream
    assert seen[1]["X-B3-TraceId"] == B3_TRACE
    spans = collector.wait_for(lambda s: len(s) >= 2)
    validate_spans(spans)
    server = next(s for s in spans if s["kind"] == "SERVER")
    assert server["traceId"] == B3_TRACE and server["parentId"] == B3_SPAN
    assert "debug" not in server


def test_w3c_restart_and_baggage_end_to_end(collector):
    async def scenario():
        app, port, seen = _serve(
            collector, [divak.TraceContextPropagation(), divak.BaggagePropagation()]
        )
        client = httpclient.AsyncHTTPClient()
        await client.fetch(
            f"http://127.0.0.1:{port}/call",
            headers={"traceparent": f"ff-{TRACE}-{SPAN}-01", "tracestate": "a=1",
                     "baggage": "user=alice+bob,x=%20y"},
        )
        await client.fetch(
            f"http://127.0.0.1:{port}/call",
            headers={"traceparent": f"cc-{TRACE}-{SPAN}-01-later",
                     "tracestate": "tenant@sys=2"},
        )
        await flush(app)
        return seen

    seen = run(scenario())
    restarted, continued = seen
    assert TRACE not in restarted["traceparent"]
    assert "tracestate" not in restarted
    assert restarted["baggage"] == "user=alice+bob,x=%20y"
    assert continued["traceparent"].startswith(f"00-{TRACE}-")
    assert continued["tracestate"] == "tenant@sys=2"


def test_correlation_id_echoed_on_errors_and_sent_downstream(collector):
    async def scenario():
        app, port, seen = _serve(
            collector,
            [
                divak.TraceContextPropagation(),
                divak.RequestIdPropagation("Correlation-ID"),
            ],
        )
        client = httpclient.AsyncHTTPClient()
        ok = await client.fetch(
            f"http://127.0.0.1:{port}/call", headers={"Correlation-ID": "req-1"}
        )
        failed = await client.fetch(
            f"http://127.0.0.1:{port}/fail",
            headers={"Correlation-ID": "bad id"},
            raise_error=False,
        )
        await flush(app)
        return ok, failed, seen

    ok, failed, seen = run(scenario())
    assert ok.headers["Correlation-ID"] == "req-1"
    assert seen[0]["Correlation-ID"] == "req-1"
    assert failed.code == 418
    assert failed.headers["Correlation-ID"] not in ("", "bad id")
    spans = collector.wait_for(lambda s: len(s) >= 3)
    tags = {s["tags"].get("divak.request_id") for s in spans if s["kind"] == "SERVER"}
    assert {"req-1", failed.headers["Correlation-ID"]} <= tags


def test_captured_headers_on_server_and_client_spans(collector):
    async def scenario():
        app, port, _seen = _serve(
            collector,
            [divak.TraceContextPropagation()],
            divak_capture_request_headers=["X-Tenant", "Authorization"],
            divak_capture_response_headers=["Content-Type"],
        )
        await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/call",
            headers={"X-Tenant": "t" * 300, "Authorization": "Bearer secret",
                     "X-Other": "not recorded"},
        )
        await flush(app)

    run(scenario())
    spans = collector.wait_for(lambda s: len(s) >= 2)
    validate_spans(spans)
    server = next(s for s in spans if s["kind"] == "SERVER")
    client = next(s for s in spans if s["kind"] == "CLIENT")
    text = json.dumps(spans)
    assert "secret" not in text and "not recorded" not in text
    assert "t" * 256 in server["tags"]["http.request.header.x-tenant"]
    assert "t" * 257 not in server["tags"]["http.request.header.x-tenant"]
    assert "REDACTED" in server["tags"]["http.request.header.authorization"]
    assert "text/html" in server["tags"]["http.response.header.content-type"]
    assert "http.response.header.content-type" in client["tags"]


def test_no_capture_configured_records_no_header(collector):
    async def scenario():
        app, port, _seen = _serve(collector, [divak.TraceContextPropagation()])
        await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/call", headers={"X-Tenant": "t"}
        )
        await flush(app)

    run(scenario())
    spans = collector.wait_for(lambda s: len(s) >= 2)
    assert not any(".header." in tag for s in spans for tag in s.get("tags", {}))


def test_sampler_description():
    sampler = propagation.PropagatedSampler(sampling.ALWAYS_ON)
    assert "AlwaysOnSampler" in sampler.get_description()
    asyncio.get_event_loop_policy()  # keep asyncio imported for helpers


@pytest.mark.parametrize("kind", ["HTTPHeaders", "dict"])
def test_headers_are_found_whatever_their_case(kind: str) -> None:
    """A propagator whose headers are all absent is not asked; one whose
    header came in any case (HTTPHeaders) or in lower case (a dict) is."""
    combined = propagation.Propagation(
        [
            divak.TraceContextPropagation(),
            divak.ZipkinPropagation(),
            divak.BaggagePropagation(),
        ]
    )
    cases = [
        ({"TRACEPARENT": TP}, TRACE),
        (
            {"X-b3-TRACEID": B3_TRACE, "x-B3-spanid": B3_SPAN, "X-B3-SAMPLED": "1"},
            B3_TRACE,
        ),
        ({"B3": f"{B3_TRACE}-{B3_SPAN}-1"}, B3_TRACE),
    ]
    for names, trace_id in cases:
        if kind == "dict":
            names = {name.lower(): value for name, value in names.items()}
        carrier: typing.Any = (
            httputil.HTTPHeaders(names) if kind == "HTTPHeaders" else dict(names)
        )
        context = combined.extract(carrier)
        assert trace.format_trace_id(remote(context).trace_id) == trace_id, names
    name = "BAGGAGE" if kind == "HTTPHeaders" else "baggage"
    baggage_carrier = {name: "user=alice"}
    carrier = (
        httputil.HTTPHeaders(baggage_carrier)
        if kind == "HTTPHeaders"
        else baggage_carrier
    )
    assert baggage.get_all(combined.extract(carrier)) == {"user": "alice"}
