"""A parsed ``tracestate`` keeps the W3C Level 2 grammar when it is changed.

OpenTelemetry's ``TraceState`` checks keys against Level 1, so adding,
updating or deleting one member of a state parsed by divak would drop the
Level 2 members (``1vendor``, ``foo@``) another vendor set, and the next
service would never see them.
"""

from __future__ import annotations

from opentelemetry import trace

from divak import TraceContextPropagation

TRACEPARENT = "00-12345678901234567890123456789012-1234567890123456-01"


def parsed(header: str) -> trace.TraceState:
    return TraceContextPropagation.parse_tracestate(header)


def test_add_update_and_delete_keep_level_2_members() -> None:
    state = parsed("1vendor=x,foo@=y")
    assert state.add("mine", "1").to_header() == "mine=1,1vendor=x,foo@=y"
    assert state.add("2nd", "1").to_header() == "2nd=1,1vendor=x,foo@=y"
    assert state.update("foo@", "z").to_header() == "foo@=z,1vendor=x"
    assert state.update("new", "v").to_header() == "new=v,1vendor=x,foo@=y"
    assert state.delete("1vendor").to_header() == "foo@=y"
    assert state.to_header() == "1vendor=x,foo@=y"  # states never change


def test_invalid_changes_leave_the_state_as_it_was() -> None:
    state = parsed("1vendor=x")
    assert state.add("Upper", "1") is state
    assert state.add("ok", "bad,value") is state
    assert state.add("1vendor", "again") is state
    assert state.update("ok", " ") is state
    assert state.delete("absent") is state
    full = parsed(",".join(f"k{n}=v" for n in range(32)))
    assert len(full) == 32
    assert full.add("one", "more") is full
    assert full.update("one", "more") is full
    assert full.update("k5", "w").to_header().startswith("k5=w,k0=v,")


def test_a_state_reads_like_opentelemetrys() -> None:
    state = parsed("1vendor=x,foo@=y")
    assert isinstance(state, trace.TraceState)
    assert list(state) == list(state.keys()) == ["1vendor", "foo@"]
    assert list(state.values()) == ["x", "y"] and len(state) == 2
    assert "foo@" in state and state["foo@"] == "y" and state.get("nope") is None
    assert state == {"1vendor": "x", "foo@": "y"}
    assert type(state).from_header(["a=1", "1b=2"]).to_header() == "a=1,1b=2"
    assert repr(trace.TraceState([("a", "1")])) == repr(parsed("a=1"))


def test_a_member_added_downstream_is_propagated_with_the_others() -> None:
    propagator = TraceContextPropagation()
    context = propagator.extract(
        {"traceparent": TRACEPARENT, "tracestate": "1vendor=x,foo@=y"}
    )
    parent = trace.get_current_span(context).get_span_context()
    child = trace.SpanContext(
        trace_id=parent.trace_id,
        span_id=0x1111111111111111,
        is_remote=False,
        trace_flags=parent.trace_flags,
        trace_state=parent.trace_state.add("mine", "1"),
    )
    headers: dict[str, str] = {}
    propagator.inject(
        headers, trace.set_span_in_context(trace.NonRecordingSpan(child))
    )
    assert headers["tracestate"] == "mine=1,1vendor=x,foo@=y"
