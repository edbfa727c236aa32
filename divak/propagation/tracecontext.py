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
        # OpenTelemetry's constructor (and add()) apply the Level 1 key
        # grammar, which rejects Level 2 keys; the members were checked
        # against Level 2.  No public way to set them exists, so the private
        # mapping is filled; tests/test_private_names.py fails loudly if
        # OpenTelemetry renames it.
        self._dict = dict(members)


class TraceContextPropagation(tracecontext.TraceContextTextMapPropagator):
    """W3C Trace Context (Level 2): the ``traceparent`` and ``tracestate`` headers.

    ``traceparent`` is handled by OpenTelemetry's
    ``TraceContextTextMapPropagator``, which follows the recommendation:
    lowercase hex only, all-zero ids and version ``ff`` invalid, higher
    versions parsed by position and re-emitted as version ``00``, and an
    invalid ``traceparent`` restarts the trace and drops ``tracestate``.
    The Level 2 *random-trace-id* flag is kept by the SDK for the whole trace.

    ``tracestate`` is parsed by :meth:`parse_tracestate` instead: like
    OpenTelemetry's parser it discards the whole header for one invalid
    member, a repeated key or more than 32 members, but it accepts the
    Level 2 keys OpenTelemetry's Level 1 key grammar rejects (``1vendor``,
    ``foo@``, ``a@b@c``, a 250-character tenant before ``@``).

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
            _joined(getter.get(carrier, "tracestate"))
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
          "*" / "/" / "@")``, so ``@`` may appear anywhere but first; a
          value is up to 256 printable ASCII characters except ``,`` and
          ``=``, not ending in a space;
        * the whole header is discarded (an empty state is returned) when
          any member is invalid, when a key repeats, or when there are more
          than 32 members, as the W3C Trace Context test suite expects
          (``test_tracestate_key_illegal_characters``,
          ``test_tracestate_duplicated_keys``,
          ``test_tracestate_member_count_limit``, ...);
        * a valid header longer than 8192 characters is truncated by whole
          members longer than 128 characters, from the end, as the
          truncation rule (section 3.3.1.5) says.

        :param header: the combined header value, or :data:`None`
        :returns: the parsed state (empty when the header was absent or
            invalid)
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
                or len(members) == _TRACESTATE_MAX_MEMBERS
            ):
                return trace.TraceState()
            seen.add(key)
            members.append((key, value))
        members = _truncate_tracestate(members)
        return _ParsedTraceState(members) if members else trace.TraceState()


def _truncate_tracestate(members: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove members over 128 characters, from the end, until 8192 fit.

    With at most 32 members, the members of up to 128 characters take at
    most 4127 characters, so removing long ones always suffices.
    """
    length = sum(len(k) + len(v) + 1 for k, v in members) + len(members) - 1
    index = len(members) - 1
    while length > _TRACESTATE_MAX_LENGTH and index >= 0:
        key, value = members[index]
        size = len(key) + len(value) + 1
        if size > _TRACESTATE_LONG_MEMBER:
            del members[index]
            length -= size + 1
        index -= 1
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
