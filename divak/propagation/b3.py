"""Zipkin's B3 headers (openzipkin/b3-propagation) and their sampling states.

Everything about B3 sampling lives here: the propagator
(:class:`ZipkinPropagation`), the sampler wrapper that honours accept,
deny, defer and debug (:class:`PropagatedSampler`), and the span processor
that marks every span of a debug trace (:class:`B3DebugMarker`) so that the
Zipkin reporter writes ``"debug": true``.
"""

from __future__ import annotations

import re
import typing

from opentelemetry import trace
from opentelemetry.context import Context, get_value, set_value
from opentelemetry.propagators import textmap
from opentelemetry.sdk.trace import SpanProcessor, sampling

from divak.propagation._common import (
    B3_DEBUG_ATTRIBUTE,
    B3_DEBUG_KEY,
    B3_DECISION_KEY,
    B3_DEFERRED_KEY,
    _first,
)

_B3_TRACE_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{16}")
_B3_SPAN_ID = re.compile(r"[0-9a-f]{16}")


class _B3:
    """One parsed B3 context: ids (maybe none) and a sampling state."""

    __slots__ = ("trace_id", "span_id", "state")

    def __init__(self, trace_id: int, span_id: int, state: str | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        #: "1" accept, "0" deny, "d" debug, None defer
        self.state = state


def _b3_ids(trace_id: str | None, span_id: str | None) -> tuple[int, int] | None:
    if not trace_id or not span_id:
        return None
    if not _B3_TRACE_ID.fullmatch(trace_id) or not _B3_SPAN_ID.fullmatch(span_id):
        return None
    # A 64-bit trace id is left-padded with zeros to 128 bits.
    ids = int(trace_id, 16), int(span_id, 16)
    return ids if ids[0] and ids[1] else None


def _parse_b3_single(value: str) -> _B3 | None:
    fields = value.strip(" \t").split("-")
    if len(fields) == 1:
        # Only a sampling state: "b3: 0" (deny), "1" or "d".
        lone = fields[0]
        return _B3(0, 0, lone) if lone in ("0", "1", "d") else None
    if len(fields) > 4:
        return None
    ids = _b3_ids(fields[0], fields[1])
    if ids is None:
        return None
    state = fields[2] if len(fields) > 2 else None
    if state is not None and state not in ("0", "1", "d"):
        return None
    if len(fields) == 4 and not _B3_SPAN_ID.fullmatch(fields[3]):
        return None
    return _B3(ids[0], ids[1], state)


_B3_SAMPLED = {"1": "1", "0": "0", "true": "1", "false": "0"}


def _parse_b3_multi(
    carrier: typing.Any, getter: textmap.Getter[typing.Any]
) -> _B3 | None:
    sampled_header = _first(getter.get(carrier, "x-b3-sampled"))
    state = _B3_SAMPLED.get((sampled_header or "").strip().lower())
    if (_first(getter.get(carrier, "x-b3-flags")) or "").strip() == "1":
        state = "d"
    ids = _b3_ids(
        (_first(getter.get(carrier, "x-b3-traceid")) or "").strip(),
        (_first(getter.get(carrier, "x-b3-spanid")) or "").strip(),
    )
    if ids is None:
        return _B3(0, 0, state) if state is not None else None
    return _B3(ids[0], ids[1], state)


class ZipkinPropagation(textmap.TextMapPropagator):
    """Zipkin's B3 headers, exactly as openzipkin/b3-propagation specifies them.

    Extraction reads the single ``b3`` header when present (it takes
    precedence) and the ``X-B3-TraceId``, ``X-B3-SpanId``,
    ``X-B3-Sampled`` and ``X-B3-Flags`` headers otherwise.  Ids are lower
    hex; a 64-bit (16 digit) trace id is accepted and left-padded with
    zeros.  The sampling states:

    * **accept** (``1``) and **deny** (``0``, also a lone ``b3: 0``) are
      followed;
    * **debug** (``d`` or ``X-B3-Flags: 1``) forces sampling, is sent on as
      ``X-B3-Flags: 1`` (or ``d``) and the Zipkin export marks every span of
      the trace ``"debug": true``;
    * **defer** (ids without a sampling state) lets the application's own
      sampler decide; an unsampled trace is sent on still deferred, without
      ``X-B3-Sampled``, so a downstream service may still sample it.

    Injection writes the multi-header form (``X-B3-TraceId``,
    ``X-B3-SpanId``, and ``X-B3-Sampled`` or ``X-B3-Flags``), or the single
    ``b3`` header (``{trace id}-{span id}-{state}``) when *single_header*
    is true.  The parent span id is never written, neither as
    ``X-B3-ParentSpanId`` nor as the single header's fourth field: the
    OpenTelemetry propagators specification says B3 injection MUST NOT
    propagate it, because OpenTelemetry never shares one span id between
    the client and the server side of a request (the receiver starts a
    span of its own, whose parent is the span id sent).

    OpenTelemetry's ``opentelemetry-propagator-b3`` is not used for
    extraction because it turns *defer* into *deny* (multi headers) or
    *accept* (single header), ignores a lone ``b3: 0``, accepts upper-case
    hex and never writes the debug flag.

    :param single_header: inject the single ``b3`` header instead of the
        ``X-B3-*`` headers
    """

    #: The headers :meth:`extract` reads, both formats: without any of them
    #: it returns the context it was given.
    EXTRACTED_HEADERS = frozenset(
        {
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        }
    )

    SINGLE_HEADER = "b3"
    TRACE_ID_HEADER = "x-b3-traceid"
    SPAN_ID_HEADER = "x-b3-spanid"
    #: Read by no one and never written (see the class documentation).
    PARENT_SPAN_ID_HEADER = "x-b3-parentspanid"
    SAMPLED_HEADER = "x-b3-sampled"
    FLAGS_HEADER = "x-b3-flags"

    def __init__(self, single_header: bool = False) -> None:
        self.single_header = single_header

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the B3 parent and sampling state added.

        Nothing is added when *context* already holds a valid remote parent
        (an earlier propagator won) or the headers are invalid.
        """
        if context is None:
            context = Context()
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
        parsed: _B3 | None = None
        single = _first(getter.get(carrier, self.SINGLE_HEADER))
        if single:
            parsed = _parse_b3_single(single)
        if parsed is None:
            parsed = _parse_b3_multi(carrier, getter)
        if parsed is None:
            return context
        if parsed.state == "d":
            context = set_value(B3_DEBUG_KEY, True, context)
        if not parsed.trace_id:
            return set_value(B3_DECISION_KEY, parsed.state != "0", context)
        if parsed.state is None:
            context = set_value(B3_DEFERRED_KEY, True, context)
        span_context = trace.SpanContext(
            trace_id=parsed.trace_id,
            span_id=parsed.span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(
                trace.TraceFlags.SAMPLED
                if parsed.state in ("1", "d")
                else trace.TraceFlags.DEFAULT
            ),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the B3 headers of the span in *context* (default: current)."""
        span = trace.get_current_span(context)
        span_context = span.get_span_context()
        if not span_context.is_valid:
            return
        if get_value(B3_DEBUG_KEY, context):
            state: str | None = "d"
        elif span_context.trace_flags.sampled:
            state = "1"
        elif get_value(B3_DEFERRED_KEY, context):
            state = None  # still deferred: the next hop decides
        else:
            state = "0"
        trace_id = trace.format_trace_id(span_context.trace_id)
        span_id = trace.format_span_id(span_context.span_id)
        if self.single_header:
            fields = [trace_id, span_id]
            if state is not None:
                fields.append(state)
            setter.set(carrier, self.SINGLE_HEADER, "-".join(fields))
            return
        setter.set(carrier, self.TRACE_ID_HEADER, trace_id)
        setter.set(carrier, self.SPAN_ID_HEADER, span_id)
        if state == "d":
            # Debug implies accept: the spec sends X-B3-Flags: 1 and no
            # X-B3-Sampled.
            setter.set(carrier, self.FLAGS_HEADER, "1")
        elif state is not None:
            setter.set(carrier, self.SAMPLED_HEADER, state)

    @property
    def fields(self) -> set[str]:
        """The header names this propagator writes."""
        if self.single_header:
            return {self.SINGLE_HEADER}
        return {
            self.TRACE_ID_HEADER,
            self.SPAN_ID_HEADER,
            self.SAMPLED_HEADER,
            self.FLAGS_HEADER,
        }


class PropagatedSampler(sampling.Sampler):
    """Wrap a sampler so that B3 sampling states are honoured.

    Applied by :class:`~divak.Recorder` around whatever sampler the
    application uses:

    * a B3 *debug* trace is always sampled;
    * a B3 *defer* parent (remote ids without a decision) is handed to the
      wrapped sampler as if there were no parent, so its root sampler
      decides, from the same trace id;
    * a lone B3 decision (``b3: 0`` or ``b3: 1``) decides a new trace.

    Everything else goes to the wrapped sampler unchanged.

    :param delegate: the application's sampler
    """

    def __init__(self, delegate: sampling.Sampler) -> None:
        self.delegate = delegate
        #: The last "sample" decision :meth:`decide` took, for the SDK's
        #: ``start_span`` call that follows it: ``(parent context, trace
        #: id, result)``, or :data:`None`.
        self._decided: tuple[Context | None, int, sampling.SamplingResult] | None = (
            None
        )

    def decide(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
    ) -> sampling.SamplingResult:
        """Decide for a span about to start; a "sample" is not decided again.

        The same decision as :meth:`should_sample`.  When it is to sample,
        the decision is kept for the SDK's ``Tracer.start_span`` that starts
        the span next, with the same *parent_context* object and
        *trace_id*: that call takes it (with the attributes it passes)
        instead of asking the wrapped sampler again, so a request is
        sampled by one decision.  Any other call finds nothing kept, or a
        decision for another span, and decides as usual.

        :param parent_context: the context the span starts under
        :param trace_id: the span's trace id (the parent's, or the new one)
        :param name: the span's name
        :param kind: the span's kind
        """
        result = self.should_sample(parent_context, trace_id, name, kind)
        if result.decision.is_sampled():
            self.keep(parent_context, trace_id, result)
        return result

    def keep(
        self,
        parent_context: Context | None,
        trace_id: int,
        result: sampling.SamplingResult,
    ) -> None:
        """Keep *result*, a "sample" decided for this sampler elsewhere, for
        the SDK's next ``start_span`` (as :meth:`decide` does).

        :param parent_context: the context the span starts under
        :param trace_id: the span's trace id
        :param result: the decision, the same :meth:`should_sample` takes
        """
        self._decided = (parent_context, trace_id, result)

    @staticmethod
    def b3_state(parent_context: Context) -> bool:
        """Whether *parent_context* holds a B3 sampling state this sampler
        acts on (debug, a lone decision, a deferred parent)."""
        return bool(
            parent_context.get(B3_DEBUG_KEY)
            or parent_context.get(B3_DECISION_KEY) is not None
            or parent_context.get(B3_DEFERRED_KEY)
        )

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
        """Decide for a new span; see the class documentation."""
        decided = self._decided
        if decided is not None:
            self._decided = None
            if decided[0] is parent_context and decided[1] == trace_id:
                return sampling.SamplingResult(
                    decided[2].decision, attributes, decided[2].trace_state
                )
        if parent_context is not None:
            if get_value(B3_DEBUG_KEY, parent_context):
                # Debug forces sampling of every span of the trace.
                return sampling.SamplingResult(
                    sampling.Decision.RECORD_AND_SAMPLE, attributes, trace_state
                )
            parent = trace.get_current_span(parent_context).get_span_context()
            if parent.is_remote or not parent.is_valid:
                decision = get_value(B3_DECISION_KEY, parent_context)
                if not parent.is_valid and decision is not None:
                    return sampling.SamplingResult(
                        sampling.Decision.RECORD_AND_SAMPLE
                        if decision
                        else sampling.Decision.DROP,
                        attributes,
                    )
                if parent.is_valid and get_value(B3_DEFERRED_KEY, parent_context):
                    parent_context = trace.set_span_in_context(
                        trace.INVALID_SPAN, parent_context
                    )
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """``PropagatedSampler{<wrapped sampler>}``."""
        return f"PropagatedSampler{{{self.delegate.get_description()}}}"


class B3DebugMarker(SpanProcessor):
    """Span processor that marks every span of a B3 *debug* trace.

    Sets the attribute :data:`B3_DEBUG_ATTRIBUTE` on spans started under a
    context whose B3 headers asked for debug; :class:`divak.ZipkinReporter`
    turns it into Zipkin's ``"debug": true`` and drops the attribute.

    One marker per provider is enough, and more would only repeat the
    work: divak adds one to a provider the first time an application
    uses it (:func:`divak.tracing.provider.join`), never one per
    application.
    """

    def on_start(self, span: typing.Any, parent_context: Context | None = None) -> None:
        """Mark *span* when its parent context is a B3 debug trace."""
        if get_value(B3_DEBUG_KEY, parent_context):
            span.set_attribute(B3_DEBUG_ATTRIBUTE, True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here: :data:`True`.

        The SDK's base method returned :data:`None` before 1.40, which made
        the provider's ``force_flush`` stop at this processor and report a
        failure without flushing the span queues after it.
        """
        return True
