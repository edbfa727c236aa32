"""Zipkin v2 JSON: finished spans encoded in one pass per batch, in slices.

:class:`ZipkinV2Encoder` reads only the public fields of OpenTelemetry's
:class:`~opentelemetry.sdk.trace.ReadableSpan` and writes the request body
the Zipkin v2 API (``POST /api/v2/spans``, a list of ``Span`` objects)
accepts.  The document is what OpenTelemetry's Zipkin JSON exporter writes
(its specification: "Zipkin exporter", request payload and attribute
mapping), with the few places where that exporter deviates from the Zipkin
v2 ``Span`` schema corrected; the class docstring lists them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import time
import types
import typing

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from divak.propagation._common import B3_DEBUG_ATTRIBUTE

__all__ = ["B3_DEBUG_ATTRIBUTE", "SLICE_SPANS", "ZipkinV2Encoder", "dumps"]

try:  # the "fast" extra: several times quicker on the export thread
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the installed extras
    _orjson = None  # type: ignore[assignment]


def dumps(encoded: typing.Any) -> bytes:
    """Serialise encoded spans to compact JSON, UTF-8.

    With orjson installed (``pip install 'divak[fast]'``) it writes the
    document; otherwise the standard :mod:`json` module does.  Both give
    the same JSON value.

    :param encoded: the list of Zipkin span dicts
    """
    if _orjson is not None:
        return _orjson.dumps(encoded)
    return json.dumps(encoded, separators=(",", ":")).encode()


#: Spans encoded between two pauses of :meth:`ZipkinV2Encoder.serialize`.
#: Encoding holds the interpreter (the GIL): measured 9 µs of CPU per
#: server span of 10 attributes with orjson (``bench/hotpath.py --only
#: export``, a 2-core virtual machine, 2026-12; 14 µs while the machine was
#: busy; the json module takes up to half as long again), so a slice of 64
#: holds it for about 0.6 ms where a batch of 512 held it for 5 ms.
SLICE_SPANS = 64

#: Zipkin's ``kind`` per OpenTelemetry span kind; INTERNAL spans have none.
_KINDS = {
    SpanKind.SERVER: "SERVER",
    SpanKind.CLIENT: "CLIENT",
    SpanKind.PRODUCER: "PRODUCER",
    SpanKind.CONSUMER: "CONSUMER",
}

#: The service name of a span whose resource has none (OpenTelemetry's
#: default for ``service.name``).
_UNKNOWN_SERVICE = "unknown_service"


@functools.lru_cache(maxsize=1024)
def _endpoint(
    address: str, port: typing.Any, service: str | None
) -> dict[str, typing.Any]:
    # Cached: a service sees few peers, and parsing an address is slow.  The
    # dict is only ever serialised, never changed.
    endpoint: dict[str, typing.Any] = {}
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        service = service or address
    else:
        endpoint["ipv4" if ip.version == 4 else "ipv6"] = str(ip)
    if service:
        endpoint["serviceName"] = service.lower()  # as Zipkin stores it
    if isinstance(port, int):
        endpoint["port"] = port
    return endpoint


def _plain(
    attributes: typing.Mapping[str, typing.Any] | None,
) -> dict[str, typing.Any]:
    """*attributes* as a plain dict, copied in one call where possible.

    The SDK hands out a span's attributes as a read-only view of a
    ``BoundedAttributes``, whose items are read one by one through a lock;
    the view's ``copy`` copies the underlying mapping at once.
    """
    if not attributes:
        return {}
    if isinstance(attributes, (dict, types.MappingProxyType)):
        return dict(attributes.copy())
    return dict(attributes)


def _microseconds(nanoseconds: int) -> int:
    """Nanoseconds since the epoch to Zipkin's microseconds, rounded."""
    return (nanoseconds + 500) // 1000


class _Constant(typing.NamedTuple):
    """What every span of one resource and instrumentation scope shares."""

    resource: Resource
    scope: InstrumentationScope | None
    tags: dict[str, str]
    local_endpoint: dict[str, str]


class ZipkinV2Encoder:
    """Encode finished spans as the body of a Zipkin v2 ``POST /api/v2/spans``.

    One pass per batch: each span is read once, from the public fields of
    :class:`~opentelemetry.sdk.trace.ReadableSpan`, into the dict Zipkin
    expects, and serialised once (:func:`dumps`), :data:`SLICE_SPANS` spans
    at a time.  The fields are the ones OpenTelemetry's Zipkin exporter
    writes: ``traceId``,
    ``id``, ``parentId``, ``name``, ``timestamp`` and ``duration`` in
    microseconds, ``localEndpoint``, ``kind``, ``tags`` (the span's
    attributes, then the resource's, the instrumentation scope as
    ``otel.scope.name``/``otel.scope.version`` and
    ``otel.library.name``/``otel.library.version``, ``otel.status_code``,
    ``error``, and the ``otel.dropped_*_count`` counters), and one
    annotation per event (``{"name": {attributes}}`` as JSON).  Tag values
    are strings: booleans ``true``/``false``, numbers in decimal, arrays
    as a JSON list of strings.  Where that exporter deviates from the
    Zipkin v2 API, this encoder does not:

    * ``kind`` is omitted for INTERNAL spans (the exporter writes ``null``,
      which the Zipkin v2 ``Span`` schema rejects);
    * ``debug`` is written only for spans of a B3 debug trace (the exporter
      marks every sampled span as debug, which makes Zipkin bypass its own
      sampling);
    * CLIENT spans get a ``remoteEndpoint`` from ``server.address`` and
      ``server.port``, named after ``peer.service`` when the span has it,
      else after ``server.address``, so that a downstream service without
      tracing still appears in Zipkin's dependency graph; SERVER spans get
      one from ``client.address``;
    * an instrumentation scope without version gets no version tags (the
      exporter writes ``null``, and a Zipkin tag value is a string);
    * service names are lower case, as Zipkin stores them;
      ``localEndpoint.serviceName`` is the resource's ``service.name``;
    * ``service.name`` is not repeated as a tag of every span: it is the
      ``localEndpoint.serviceName``.  The other resource attributes stay
      tags, Zipkin v2 having no other place for them;
    * a failed span whose status has no description gets its
      ``error.type`` attribute (else ``"error"``) as ``error`` tag rather
      than an empty one;
    * ``duration`` is at least one microsecond, as the schema requires.

    The tags of a resource and instrumentation scope, and the local
    endpoint, are computed once rather than for every span: encoding runs
    on the export thread, which shares the CPU with the IOLoop.  Not
    thread-safe; each reporter has its own encoder, used by its queue's
    one thread.

    :param max_tag_value_length: characters a tag value keeps at most
        (arrays are cut between elements); :data:`None` or ``0`` keeps
        them whole.  With ``1``, array tags are left out.
    """

    #: The media type of :meth:`serialize`'s output.
    content_type = "application/json"

    def __init__(self, max_tag_value_length: int | None = None) -> None:
        if max_tag_value_length is not None and max_tag_value_length <= 0:
            max_tag_value_length = None
        self.max_tag_value_length = max_tag_value_length
        self._constants: dict[tuple[int, int], _Constant] = {}

    def serialize(self, spans: typing.Sequence[ReadableSpan]) -> bytes:
        """The request body for *spans*: a JSON list of Zipkin v2 spans, UTF-8.

        The spans are encoded :data:`SLICE_SPANS` at a time, each slice
        serialised once by :func:`dumps`, and the pieces joined into one
        list; between slices the calling thread releases the interpreter
        (``time.sleep(0)``), so that a large batch does not hold the IOLoop
        up for more than about a millisecond at a time.  Call it off the
        IOLoop.

        :param spans: finished spans
        :raises Exception: what reading a malformed span raises (a span
            without start time, for instance); the reporter counts the
            batch as failed
        """
        pieces: list[bytes] = []
        for start in range(0, len(spans), SLICE_SPANS):
            if pieces:  # let a thread waiting for the interpreter run
                time.sleep(0)
            piece = spans[start : start + SLICE_SPANS]
            encoded = dumps([self.encode_span(span) for span in piece])
            pieces.append(encoded[1:-1])  # without the brackets
        return b"[" + b",".join(pieces) + b"]"

    def encode_span(self, span: ReadableSpan) -> dict[str, typing.Any]:
        """The Zipkin v2 ``Span`` object of one finished span, as a dict.

        :param span: a finished span
        """
        context = span.context
        attributes = _plain(span.attributes)
        start = span.start_time or 0
        duration = _microseconds((span.end_time or start) - start)
        constant = self._constant(span.resource, span.instrumentation_scope)
        encoded: dict[str, typing.Any] = {
            "traceId": format_trace_id(context.trace_id),
            "id": format_span_id(context.span_id),
            "name": span.name,
            "timestamp": _microseconds(start),
            "duration": duration if duration > 0 else 1,
            "localEndpoint": constant.local_endpoint,
        }
        if span.parent is not None:
            encoded["parentId"] = format_span_id(span.parent.span_id)
        kind = _KINDS.get(span.kind)
        if kind is not None:
            encoded["kind"] = kind
        tags = self._span_tags(span, attributes, constant)
        if tags:
            encoded["tags"] = tags
        events = span.events
        if events:
            encoded["annotations"] = [
                {
                    "timestamp": _microseconds(event.timestamp),
                    "value": json.dumps(
                        {event.name: self._event_attributes(event.attributes)},
                        sort_keys=True,
                    ),
                }
                for event in events
            ]
        if attributes.get(B3_DEBUG_ATTRIBUTE):
            encoded["debug"] = True
        if kind == "CLIENT" and "server.address" in attributes:
            peer = attributes.get("peer.service")
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["server.address"]),
                attributes.get("server.port"),
                str(peer or attributes["server.address"]),
            )
        elif kind == "SERVER" and "client.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["client.address"]), attributes.get("client.port"), None
            )
        return encoded

    def _constant(
        self, resource: Resource, scope: InstrumentationScope | None
    ) -> _Constant:
        key = (id(resource), id(scope))
        cached = self._constants.get(key)
        # The cache holds the resource and scope, so their ids stay unique.
        if cached is not None and cached.resource is resource and cached.scope is scope:
            return cached
        service = _UNKNOWN_SERVICE
        tags: dict[str, str] = {}
        if resource is not None:
            resource_attributes = dict(resource.attributes)
            service = str(resource_attributes.pop(SERVICE_NAME, None) or service)
            tags = self._tags(resource_attributes)
        if scope is not None:
            tags["otel.library.name"] = scope.name
            if scope.version is not None:
                tags["otel.library.version"] = scope.version
            tags["otel.scope.name"] = scope.name
            if scope.version is not None:
                tags["otel.scope.version"] = scope.version
        if len(self._constants) >= 64:
            self._constants.clear()
        cached = _Constant(resource, scope, tags, {"serviceName": service.lower()})
        self._constants[key] = cached
        return cached

    def _span_tags(
        self,
        span: ReadableSpan,
        attributes: typing.Mapping[str, typing.Any],
        constant: _Constant,
    ) -> dict[str, str]:
        tags = self._tags(attributes)
        tags.pop(B3_DEBUG_ATTRIBUTE, None)
        resource = constant.resource
        if resource is not None and SERVICE_NAME in resource.attributes:
            tags.pop(SERVICE_NAME, None)  # the resource's: localEndpoint
        tags.update(constant.tags)
        status = span.status
        if status.status_code is not StatusCode.UNSET:
            tags["otel.status_code"] = status.status_code.name
            if status.status_code is StatusCode.ERROR:
                tags["error"] = status.description or str(
                    attributes.get("error.type") or "error"
                )
        if span.dropped_attributes:
            tags["otel.dropped_attributes_count"] = str(span.dropped_attributes)
        if span.dropped_events:
            tags["otel.dropped_events_count"] = str(span.dropped_events)
        if span.dropped_links:
            tags["otel.dropped_links_count"] = str(span.dropped_links)
        return tags

    def _tags(self, values: typing.Mapping[str, typing.Any]) -> dict[str, str]:
        """Attribute values as Zipkin tag strings, cut to the length limit."""
        limit = self.max_tag_value_length
        tags: dict[str, str] = {}
        for key, value in values.items():
            kind = type(value)
            if kind is str:  # the common case first
                text = value
            elif kind is bool:
                text = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                text = str(value)
            elif isinstance(value, typing.Sequence):
                text = self._array(value)
                if text is None:
                    continue
            else:  # not an attribute value OpenTelemetry allows
                continue
            tags[key] = text[:limit] if limit else text
        return tags

    def _array(self, values: typing.Sequence[typing.Any]) -> str | None:
        """An array attribute as a JSON list of strings, cut between elements.

        The list keeps the elements whose JSON (quotes, commas and the
        brackets counted) fits in the length limit; :data:`None` when the
        limit is one character, too short for any list.
        """
        limit = self.max_tag_value_length
        if limit == 1:
            return None
        items: list[str | None] = []
        length = len("[]")
        for value in values:
            item: str | None
            if value is None:
                item = None
            elif isinstance(value, bool):
                item = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                item = str(value)
            else:
                continue
            if limit:
                length += (len("null") if item is None else len(item) + 2) + (
                    1 if items else 0
                )
                if length > limit:
                    break
            items.append(item)
        return json.dumps(items, separators=(",", ":"))

    def _event_attributes(
        self, attributes: typing.Mapping[str, typing.Any] | None
    ) -> dict[str, typing.Any]:
        limit = self.max_tag_value_length
        values = _plain(attributes)
        if not limit:
            return values
        return {
            key: value[:limit] if isinstance(value, str) else value
            for key, value in values.items()
        }
