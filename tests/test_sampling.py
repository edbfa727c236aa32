"""One sampling decision per request, the same as the SDK's samplers take."""

from __future__ import annotations

import itertools
import typing

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling
from tornado import httpclient, web

import divak
from divak.testing import SpanRecorder
from divak.tracing.sampling import ParentBasedRatio

from .conftest import flush, listen, run

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

RATES = (0.0, 0.001, 0.5, 1.0)
#: Trace ids on both sides of every rate's bound (the lower 64 bits count).
TRACE_IDS = (
    1,
    0x0000000000000000_0000000000000000 + 12345,
    0xFFFFFFFFFFFFFFFF_0000000000000000,
    0x0000000000000001_7FFFFFFFFFFFFFFF,
    0x0000000000000001_8000000000000000,
    0x00000000000000AA_FFFFFFFFFFFFFFFF,
    int(TRACE, 16),
    (1 << 128) - 1,
)


def _parent(
    valid: bool, remote: bool, sampled: bool, state: str | None
) -> Context | None:
    if not valid:
        return Context()
    span_context = trace.SpanContext(
        int(TRACE, 16),
        int(SPAN, 16),
        is_remote=remote,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else 0),
        trace_state=trace.TraceState.from_header([state]) if state else None,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), Context())


PARENTS = [
    pytest.param(_parent(False, False, False, None), id="no parent"),
    pytest.param(trace.set_span_in_context(trace.INVALID_SPAN), id="invalid parent"),
    *(
        pytest.param(
            _parent(True, remote, sampled, state),
            id=f"{'remote' if remote else 'local'} "
            f"{'sampled' if sampled else 'unsampled'}{' +state' if state else ''}",
        )
        for remote, sampled, state in itertools.product(
            (True, False), (True, False), (None, "a=1,b=2")
        )
    ),
]


@pytest.mark.parametrize("parent", PARENTS)
@pytest.mark.parametrize("rate", RATES)
def test_parent_based_ratio_decides_as_the_sdk(parent: Context, rate: float) -> None:
    ours, theirs = ParentBasedRatio(rate), sampling.ParentBasedTraceIdRatio(rate)
    assert ours.get_description() == theirs.get_description()
    attributes = {"url.path": "/"}
    for trace_id in TRACE_IDS:
        mine = ours.should_sample(parent, trace_id, "GET /", None, attributes)
        sdk = theirs.should_sample(parent, trace_id, "GET /", None, attributes)
        assert mine.decision == sdk.decision, hex(trace_id)
        assert mine.attributes == sdk.attributes
        assert mine.trace_state == sdk.trace_state


def test_parent_based_ratio_refuses_a_rate_outside_0_1() -> None:
    with pytest.raises(ValueError):
        ParentBasedRatio(1.5)


class _CountingSampler(sampling.Sampler):
    """A user's sampler: samples everything, counts the questions."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: typing.Any = None,
        links: typing.Any = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        self.questions.append(name)
        return sampling.SamplingResult(
            sampling.Decision.RECORD_AND_SAMPLE, attributes, trace_state
        )

    def get_description(self) -> str:
        return "Counting"


class Hello(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        with self.record_operation("inner"):
            self.write("hi")


def test_a_sampled_request_is_decided_once() -> None:
    """The SERVER span's sampler is asked once; a child span is its own span."""
    counting = _CountingSampler()
    recorder = SpanRecorder()

    class App(divak.Recorder):
        def __init__(self) -> None:
            super().__init__([("/", Hello)])
            self.add_divak_reporter(recorder)
            self.divak_instrumentation.sampler = counting

    async def scenario() -> list[int]:
        app = App()
        port = listen(app)
        codes = []
        for headers in ({}, {"traceparent": f"00-{TRACE}-{SPAN}-01"}):
            response = await httpclient.AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{port}/", headers=headers
            )
            codes.append(response.code)
        await flush(app)
        return codes

    assert run(scenario()) == [200, 200]
    assert counting.questions == ["GET /", "inner", "GET /", "inner"]
    servers = [span for span in recorder.spans if span.kind is trace.SpanKind.SERVER]
    assert len(servers) == 2
    for span in servers:  # the attributes given with the decision are kept
        assert span.attributes["url.path"] == "/"
        assert span.attributes["http.request.method"] == "GET"
    assert f"{servers[1].context.trace_id:032x}" == TRACE
    assert f"{servers[1].parent.span_id:016x}" == SPAN


def test_a_ratio_sampler_decides_each_request_by_its_trace_id(
    log_records: list[typing.Any],
) -> None:
    """ProbabilisticSampler: a new trace is sampled when its id's lower 64
    bits are below the ratio's bound, an upstream decision is followed, and
    what was sampled (and only that) is exported."""
    recorder = SpanRecorder()

    class App(divak.ProbabilisticSampler, divak.Recorder):
        def __init__(self) -> None:
            super().__init__([("/", Hello)])
            self.add_divak_reporter(recorder)
            self.set_divak_sample_probability(0.5)

    upstream = {
        f"{index:032x}": f"00-{index:032x}-{SPAN}-0{index % 2}"
        for index in range(0x1000, 0x1010)
    }

    async def scenario() -> None:
        app = App()
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        for _ in range(40):
            await client.fetch(f"http://127.0.0.1:{port}/")
        for traceparent in upstream.values():
            await client.fetch(
                f"http://127.0.0.1:{port}/", headers={"traceparent": traceparent}
            )
        await flush(app)

    run(scenario())
    lines = [r for r in log_records if r.name == "tornado.access"]
    assert len(lines) == 56
    decided = {r.otelTraceID: r.otelTraceSampled for r in lines}
    assert len(decided) == 56
    bound = 1 << 63
    for trace_id, sampled in decided.items():
        if trace_id in upstream:
            assert sampled is (upstream[trace_id].endswith("-01")), trace_id
        else:
            assert sampled is ((int(trace_id, 16) & (2**64 - 1)) < bound), trace_id
    exported = {
        f"{span.context.trace_id:032x}"
        for span in recorder.spans
        if span.kind is trace.SpanKind.SERVER
    }
    assert exported == {t for t, sampled in decided.items() if sampled}
    assert 0 < len(exported) < 56
