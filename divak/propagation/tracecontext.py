"""W3C Trace Context (Level 2): the ``traceparent`` and ``tracestate`` headers."""

from __future__ import annotations

import re
import typing

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.propagation import tracecontext

from divak.propagation._common import (
    _joined,
)

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
