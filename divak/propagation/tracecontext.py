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


def _valid_member(key: str, value: str) -> bool:
    """Whether ``key=value`` is a list member by the Level 2 grammar."""
    return bool(_TRACESTATE_KEY.fullmatch(key) and _TRACESTATE_VALUE.fullmatch(value))


class _Level2TraceState(trace.TraceState):
    """A ``TraceState`` that follows W3C Trace Context Level 2's key grammar.

    OpenTelemetry's :class:`~opentelemetry.trace.TraceState` checks keys
    against Level 1, so it drops Level 2 keys (``1vendor``, ``foo@``) in
    its constructor, :meth:`add`, :meth:`update` and :meth:`delete`.  This
    subclass keeps its members itself and implements every public method
    of the base class on them, with the same results for Level 1 members
    (``tests/test_private_names.py`` fails if OpenTelemetry adds a public
    method this class does not implement).  Returned states are
    ``_Level2TraceState`` too, so a member a sampler adds never costs the
    members another vendor set.
    """

    def __init__(self, entries: typing.Sequence[tuple[str, str]] = ()) -> None:
        """Hold *entries*, which the caller checked (:meth:`from_members`)."""
        super().__init__()  # the base class's own mapping stays empty
        self._members: dict[str, str] = dict(entries)

    @classmethod
    def from_members(
        cls, members: typing.Sequence[tuple[str, str]]
    ) -> _Level2TraceState:
        """The state of *members*; empty if any is invalid or a key repeats,
        or when there are more than 32."""
        if len(members) > _TRACESTATE_MAX_MEMBERS or len(
            {key for key, _ in members}
        ) != len(members):
            return cls()
        if not all(_valid_member(key, value) for key, value in members):
            return cls()
        return cls(members)

    def __contains__(self, item: object) -> bool:
        return item in self._members

    def __getitem__(self, key: str) -> str:
        return self._members[key]

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return repr([f"{{key={k}, value={v}}}" for k, v in self._members.items()])

    def add(self, key: str, value: str) -> _Level2TraceState:
        """A new state with ``key=value`` first; *self* when the member is
        invalid, the key exists or 32 members are there already."""
        if (
            not _valid_member(key, value)
            or key in self._members
            or len(self._members) >= _TRACESTATE_MAX_MEMBERS
        ):
            return self
        return type(self)([(key, value), *self._members.items()])

    def update(self, key: str, value: str) -> _Level2TraceState:
        """A new state with ``key=value`` moved first (added when absent, as
        OpenTelemetry's does); *self* when the member is invalid, or the key
        is new and 32 members are there already."""
        if not _valid_member(key, value) or (
            key not in self._members
            and len(self._members) >= _TRACESTATE_MAX_MEMBERS
        ):
            return self
        rest = [(k, v) for k, v in self._members.items() if k != key]
        return type(self)([(key, value), *rest])

    def delete(self, key: str) -> _Level2TraceState:
        """A new state without *key*; *self* when the key is absent."""
        if key not in self._members:
            return self
        return type(self)([(k, v) for k, v in self._members.items() if k != key])

    def to_header(self) -> str:
        """The ``tracestate`` header value: the members, in order."""
        return ",".join(f"{key}={value}" for key, value in self._members.items())

    @classmethod
    def from_header(cls, header_list: list[str]) -> _Level2TraceState:
        """Parse ``tracestate`` header values the Level 2 way
        (:meth:`TraceContextPropagation.parse_tracestate`)."""
        return _parse_tracestate(",".join(header_list))

    @classmethod
    def get_default(cls) -> _Level2TraceState:
        """An empty state."""
        return cls()

    def keys(self) -> typing.KeysView[str]:
        """The keys, in order."""
        return self._members.keys()

    def items(self) -> typing.ItemsView[str, str]:
        """The ``(key, value)`` members, in order."""
        return self._members.items()

    def values(self) -> typing.ValuesView[str]:
        """The values, in order."""
        return self._members.values()


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

    #: The headers :meth:`extract` reads: without any of them it returns the
    #: context it was given.
    EXTRACTED_HEADERS = frozenset({"traceparent", "tracestate"})

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

        The state returned keeps the Level 2 grammar in its ``add``,
        ``update`` and ``delete`` too (OpenTelemetry's own ``TraceState``
        would drop the Level 2 keys there).

        :param header: the combined header value, or :data:`None`
        :returns: the parsed state (empty when the header was absent or
            invalid)
        """
        return _parse_tracestate(header)


def _parse_tracestate(header: str | None) -> _Level2TraceState:
    if not header:
        return _Level2TraceState()
    members: list[tuple[str, str]] = []
    for raw in header.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, sep, value = member.partition("=")
        if not sep:
            return _Level2TraceState()
        members.append((key, value))
    state = _Level2TraceState.from_members(members)
    return _Level2TraceState(_truncate_tracestate(list(state.items())))


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
