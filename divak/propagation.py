"""Propagators: how trace context and correlation ids cross process borders.

Every propagator here is an OpenTelemetry
:class:`~opentelemetry.propagators.textmap.TextMapPropagator`, so any other
OpenTelemetry propagator may be added to an application too.  An
application combines the ones it was given with :class:`Propagation`:

* extraction runs them in the order they were added; the **first** one that
  finds a valid trace context wins (later trace headers are ignored), while
  the other values they extract (correlation id, baggage, ...) are all kept;
* injection writes the headers of **all** of them.

Invalid input never raises: a propagator that cannot parse its header
leaves the context as it was, and the request starts a new trace.

Where OpenTelemetry's own propagators follow their specification, divak
uses them as they are.  The places where they deviate are fixed here, each
in one method: :meth:`TraceContextPropagation.parse_tracestate` (W3C Trace
Context Level 2 ``tracestate``), :class:`ZipkinPropagation` (B3 sampling
states) and :class:`BaggagePropagation` (W3C Baggage encoding and limits).
"""

from __future__ import annotations

import logging
import re
import typing
import urllib.parse
import uuid

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_value, set_value
from opentelemetry.propagators import textmap
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace.propagation import tracecontext

__all__ = [
    "B3_DEBUG_KEY",
    "B3_DECISION_KEY",
    "B3_DEFERRED_KEY",
    "BaggagePropagation",
    "Propagation",
    "PropagatedSampler",
    "REQUEST_ID_KEY",
    "RequestIdPropagation",
    "TraceContextPropagation",
    "ZipkinPropagation",
    "get_request_id",
]

logger = logging.getLogger(__name__)

#: Context key holding the request's correlation id (:class:`str`).
REQUEST_ID_KEY = "divak.request_id"

#: Context key that is :data:`True` when an upstream B3 header asked for a
#: *debug* trace (``b3: {trace}-{span}-d`` or ``X-B3-Flags: 1``).
B3_DEBUG_KEY = "divak.b3.debug"

#: Context key that is :data:`True` when upstream B3 headers carried trace
#: identifiers but no sampling state (B3 *defer*): the local sampler decides,
#: and an unsampled trace is sent on still deferred (no ``X-B3-Sampled``).
B3_DEFERRED_KEY = "divak.b3.deferred"

#: Context key holding a B3 sampling decision that arrived *without* trace
#: identifiers (``b3: 0``, ``b3: 1``, ``X-B3-Sampled: 0`` alone):
#: :data:`True` (accept) or :data:`False` (deny) for the new trace.
B3_DECISION_KEY = "divak.b3.decision"


def get_request_id(context: Context | None = None) -> str | None:
    """Return the correlation id stored in *context* (default: current)."""
    return typing.cast("str | None", get_value(REQUEST_ID_KEY, context))


def _first(values: typing.Iterable[str] | None) -> str | None:
    if not values:
        return None
    return next(iter(values), None)


def _joined(values: typing.Iterable[str] | None) -> str | None:
    """All values of a header, combined with ``,`` as RFC 9110 section 5.3 says."""
    if not values:
        return None
    if isinstance(values, str):
        return values
    return ",".join(values)


# -- W3C Trace Context ---------------------------------------------------

# W3C Trace Context Level 2, section 3.3.1.3: list-member = key "=" value.
_TRACESTATE_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_TRACESTATE_VALUE = re.compile(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MAX_LENGTH = 8192
_TRACESTATE_LONG_MEMBER = 128


class _ParsedTraceState(trace.TraceState):
    """A ``TraceState`` holding members divak already validated (Level 2 keys)."""

    def __init__(self, members: typing.Sequence[tuple[str, str]]) -> None:
        super().__init__()
        # OpenTelemetry's constructor applies the Level 1 key grammar, which
        # rejects Level 2 keys; the members were checked against Level 2.
        self._dict = dict(members)


class TraceContextPropagation(tracecontext.TraceContextTextMapPropagator):
    """W3C Trace Context (Level 2): the ``traceparent`` and ``tracestate`` headers.

    ``traceparent`` is handled by OpenTelemetry's
    ``TraceContextTextMapPropagator``, which follows the recommendation:
    lowercase hex only, all-zero ids and version ``ff`` invalid, higher
    versions parsed by position and re-emitted as version ``00``, and an
    invalid ``traceparent`` restarts the trace and drops ``tracestate``.
    The Level 2 *random-trace-id* flag is kept by the SDK for the whole trace.

    ``tracestate`` is parsed by :meth:`parse_tracestate` instead, because
    OpenTelemetry's parser drops the whole header for one bad member or one
    duplicate key and rejects Level 2 keys (``1vendor``, ``a@b@c``).

    This is the propagator an application uses when none was added.
    """

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the remote parent of a valid ``traceparent``."""
        if context is None:
            context = Context()
        extracted = super().extract(carrier, context, _TraceParentOnly(getter))
        span_context = trace.get_current_span(extracted).get_span_context()
        if extracted is context or not span_context.is_valid:
            return context
        state = self.parse_tracestate(
            _joined(getter.get(carrier, self._TRACESTATE_HEADER_NAME))
        )
        span_context = trace.SpanContext(
            trace_id=span_context.trace_id,
            span_id=span_context.span_id,
            is_remote=True,
            # Only the flags this version defines (sampled, random-trace-id)
            # are kept: "Vendors MUST set those [other flags] to zero".
            trace_flags=trace.TraceFlags(span_context.trace_flags & 0x03),
            trace_state=state,
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    @staticmethod
    def parse_tracestate(header: str | None) -> trace.TraceState:
        """Parse a combined ``tracestate`` header the Level 2 way.

        * members are separated by ``,`` with optional spaces and tabs
          around them; empty members are allowed and skipped;
        * a key is ``(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" /
          "*" / "/" / "@")``; a value is up to 256 printable ASCII
          characters except ``,`` and ``=``, not ending in a space;
        * an invalid member is discarded on its own ("Invalid tracestate
          entries MAY also be discarded"); the valid ones are kept;
        * of duplicate keys the first (left-most, most recent) is kept, so
          the state sent on never repeats a key;
        * at most 32 members and 8192 characters are kept; when there are
          more, whole members are removed, those longer than 128 characters
          first, then from the end, as the truncation rule says.

        :param header: the combined header value, or :data:`None`
        :returns: the parsed state (empty when nothing valid remained)
        """
        if not header:
            return trace.TraceState()
        members: list[tuple[str, str]] = []
        seen: set[str] = set()
        for raw in header.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            key, sep, value = member.partition("=")
            if (
                not sep
                or key in seen
                or not _TRACESTATE_KEY.fullmatch(key)
                or not _TRACESTATE_VALUE.fullmatch(value)
            ):
                continue
            seen.add(key)
            members.append((key, value))
        members = _truncate_tracestate(members)
        return _ParsedTraceState(members) if members else trace.TraceState()


def _truncate_tracestate(members: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def length(items: list[tuple[str, str]]) -> int:
        return sum(len(k) + len(v) + 1 for k, v in items) + max(len(items) - 1, 0)

    if len(members) <= _TRACESTATE_MAX_MEMBERS and length(members) <= (
        _TRACESTATE_MAX_LENGTH
    ):
        return members
    # Remove members longer than 128 characters first, from the end...
    for index in range(len(members) - 1, -1, -1):
        if len(members) <= _TRACESTATE_MAX_MEMBERS and length(members) <= (
            _TRACESTATE_MAX_LENGTH
        ):
            return members
        key, value = members[index]
        if len(key) + len(value) + 1 > _TRACESTATE_LONG_MEMBER:
            del members[index]
    # ...then any member, from the end.
    while members and (
        len(members) > _TRACESTATE_MAX_MEMBERS
        or length(members) > _TRACESTATE_MAX_LENGTH
    ):
        members.pop()
    return members


class _TraceParentOnly(textmap.Getter[typing.Any]):
    """Hide ``tracestate`` from OpenTelemetry's parser (divak parses it)."""

    def __init__(self, getter: textmap.Getter[typing.Any]) -> None:
        self.getter = getter

    def get(self, carrier: typing.Any, key: str) -> list[str] | None:
        if key == "tracestate":
            return None
        return self.getter.get(carrier, key)

    def keys(self, carrier: typing.Any) -> list[str]:
        return self.getter.keys(carrier)


# -- B3 ------------------------------------------------------------------

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
        state = fields[0]
        return _B3(0, 0, state) if state in ("0", "1", "d") else None
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
    ``X-B3-SpanId``, ``X-B3-ParentSpanId``, and ``X-B3-Sampled`` or
    ``X-B3-Flags``), or the single ``b3`` header when *single_header* is
    true.  The parent span id is known, and written, for recorded spans.

    OpenTelemetry's ``opentelemetry-propagator-b3`` is not used for
    extraction because it turns *defer* into *deny* (multi headers) or
    *accept* (single header), ignores a lone ``b3: 0``, accepts upper-case
    hex and never writes ``X-B3-ParentSpanId`` or the debug flag.

    :param single_header: inject the single ``b3`` header instead of the
        ``X-B3-*`` headers
    """

    SINGLE_HEADER = "b3"
    TRACE_ID_HEADER = "x-b3-traceid"
    SPAN_ID_HEADER = "x-b3-spanid"
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
        parent = getattr(span, "parent", None)
        parent_id = (
            trace.format_span_id(parent.span_id)
            if isinstance(parent, trace.SpanContext) and parent.is_valid
            else None
        )
        trace_id = trace.format_trace_id(span_context.trace_id)
        span_id = trace.format_span_id(span_context.span_id)
        if self.single_header:
            fields = [trace_id, span_id]
            if state is not None:
                fields.append(state)
                if parent_id:
                    fields.append(parent_id)
            setter.set(carrier, self.SINGLE_HEADER, "-".join(fields))
            return
        setter.set(carrier, self.TRACE_ID_HEADER, trace_id)
        setter.set(carrier, self.SPAN_ID_HEADER, span_id)
        if parent_id:
            setter.set(carrier, self.PARENT_SPAN_ID_HEADER, parent_id)
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
            self.PARENT_SPAN_ID_HEADER,
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


# -- W3C Baggage ---------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAGGAGE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_BAGGAGE_SAFE = "!#$&'()*+-./:<>?@[]^_`{|}~"  # baggage-octets kept as they are


class BaggagePropagation(W3CBaggagePropagator):
    """W3C Baggage: the ``baggage`` header.

    Built on OpenTelemetry's ``W3CBaggagePropagator`` (so values land in
    :mod:`opentelemetry.baggage`), with its deviations from the W3C Baggage
    specification fixed:

    * values are percent-decoded and -encoded as the spec says (``+`` is a
      plus sign, a space is ``%20``; OpenTelemetry uses form encoding);
      keys are ``token`` characters and taken as they are;
    * a header over the limits keeps the whole list-members that fit
      instead of being dropped entirely: up to *max_members* members and
      *max_length* bytes (the spec's minimums are 64 and 8192);
    * an invalid list-member (bad key, bad value, invalid UTF-8) is dropped
      on its own, without logging the untrusted text;
    * properties (``;k=v``) are accepted and not kept (OpenTelemetry's
      baggage has no metadata); of duplicate keys the last wins.

    :param max_members: the most list-members read or written
    :param max_length: the longest ``baggage`` value read or written, in
        bytes
    """

    def __init__(self, max_members: int = 64, max_length: int = 8192) -> None:
        self.max_members = max_members
        self.max_length = max_length

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the valid baggage entries added."""
        if context is None:
            context = Context()
        header = _joined(getter.get(carrier, self._BAGGAGE_HEADER_NAME))
        if not header:
            return context
        count = 0
        length = 0
        for raw in header.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            length += len(member) + (1 if count else 0)
            if count >= self.max_members or length > self.max_length:
                break
            key, sep, rest = member.partition("=")
            key = key.strip(" \t")
            value = rest.split(";", 1)[0].strip(" \t")
            if not sep or not _TOKEN.fullmatch(key) or not _BAGGAGE_VALUE.fullmatch(
                value
            ):
                continue
            try:
                decoded = urllib.parse.unquote(value, errors="strict")
            except UnicodeDecodeError:
                continue
            context = otel_baggage.set_baggage(key, decoded, context)
            count += 1
        return context

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the baggage of *context* (default: current), within the limits."""
        entries = otel_baggage.get_all(context)
        if not entries:
            return
        members: list[str] = []
        length = 0
        for key, value in entries.items():
            if not _TOKEN.fullmatch(str(key)):
                continue
            member = f"{key}={urllib.parse.quote(str(value), safe=_BAGGAGE_SAFE)}"
            if (
                len(members) >= self.max_members
                or length + len(member) + (1 if members else 0) > self.max_length
            ):
                break
            length += len(member) + (1 if members else 0)
            members.append(member)
        if members:
            setter.set(carrier, self._BAGGAGE_HEADER_NAME, ",".join(members))


# -- correlation id ------------------------------------------------------


def _valid_request_id(value: str | None, max_length: int) -> bool:
    if not value or len(value) > max_length:
        return False
    return all("!" <= ch <= "~" for ch in value)


class RequestIdPropagation(textmap.TextMapPropagator):
    """A correlation id header, taken from the request or made up.

    The incoming header is accepted when it is 1 to *max_length* visible
    ASCII characters (``!`` to ``~``: no spaces, no control characters,
    so no CR or LF); otherwise *value_factory* makes a new one (an invalid
    value is logged at DEBUG and never echoed).  The id is echoed on every
    response (errors and 404s included), written into every log record as
    ``divak_request_id``, set on the server span as the ``divak.request_id``
    attribute, and sent on every outgoing request.

    :param header_name: the header to read, echo and send; divak-tornado
        uses ``Request-Id``, sprockets.mixins.correlation ``Correlation-ID``
    :param value_factory: callable returning a new id; its :func:`str` is
        used.  :data:`None` disables generation: requests without a valid
        header then have no id.
    :param max_length: longest accepted id, in characters
    """

    def __init__(
        self,
        header_name: str = "Request-Id",
        value_factory: typing.Callable[[], typing.Any] | None = uuid.uuid4,
        *,
        max_length: int = 128,
    ) -> None:
        self.header_name = header_name
        self.value_factory = value_factory
        self.max_length = max_length

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the request's correlation id added."""
        value = _first(getter.get(carrier, self.header_name))
        if not _valid_request_id(value, self.max_length):
            if value is not None:
                logger.debug(
                    "ignoring invalid %s header of %d characters",
                    self.header_name,
                    len(value),
                )
            value = None
            if self.value_factory is not None:
                value = str(self.value_factory())
        if value is None:
            return context if context is not None else Context()
        return set_value(REQUEST_ID_KEY, value, context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the correlation id of *context* (default: current)."""
        value = get_request_id(context)
        if value is not None:
            setter.set(carrier, self.header_name, value)

    @property
    def fields(self) -> set[str]:
        """The header name this propagator writes."""
        return {self.header_name}


class Propagation:
    """The propagators of one application, combined.

    :param propagators: OpenTelemetry text-map propagators, in order of
        precedence for extraction
    """

    def __init__(self, propagators: typing.Sequence[textmap.TextMapPropagator]):
        self.propagators = tuple(propagators)
        self.request_id: RequestIdPropagation | None = next(
            (p for p in self.propagators if isinstance(p, RequestIdPropagation)),
            None,
        )

    def extract(self, carrier: typing.Any) -> Context:
        """Build a new context from the headers in *carrier*.

        The first valid trace context wins; the other values extracted by
        every propagator are kept.  A propagator that raises is logged at
        DEBUG and skipped: bad input never fails a request.
        """
        context = Context()
        parent: trace.Span | None = None
        for propagator in self.propagators:
            try:
                extracted = propagator.extract(carrier, context)
            except Exception:  # noqa: BLE001 - a header must never fail a request
                logger.debug("%r failed to extract", propagator, exc_info=True)
                continue
            span = trace.get_current_span(extracted)
            if span is not trace.get_current_span(context):
                if parent is None and span.get_span_context().is_valid:
                    parent = span
                else:
                    extracted = trace.set_span_in_context(
                        parent or trace.INVALID_SPAN, extracted
                    )
            context = extracted
        return context

    def inject(self, carrier: typing.Any, context: Context | None = None) -> None:
        """Write the headers of every propagator into *carrier*."""
        for propagator in self.propagators:
            propagator.inject(carrier, context)
