"""Zipkin v2 JSON encoding, fixed where OpenTelemetry's encoder deviates."""

from __future__ import annotations

import functools
import ipaddress
import json
import typing

from opentelemetry import trace
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

__all__ = ["B3_DEBUG_ATTRIBUTE", "ZipkinV2Encoder"]

from divak.propagation._common import B3_DEBUG_ATTRIBUTE

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


class ZipkinV2Encoder(JsonV2Encoder):
    """OpenTelemetry's Zipkin v2 JSON encoder with its spec deviations fixed.

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
    * service names are lower case, as Zipkin stores them;
    * ``service.name`` is not repeated as a tag of every span: it is the
      ``localEndpoint.serviceName``.  The other resource attributes stay
      tags, Zipkin v2 having no other place for them;
    * a failed span whose status has no description gets its
      ``error.type`` attribute (else ``"error"``) as ``error`` tag rather
      than an empty one;
    * ``duration`` is at least one microsecond, as the schema requires.

    The output is the library's, but the tags of the resource and of the
    instrumentation scope are computed once per resource and scope rather
    than for every span, and plain string and number attributes take a
    short path: encoding runs on the export thread, which shares the CPU
    with the IOLoop.
    """

    def __init__(self, max_tag_value_length: int | None = None) -> None:
        super().__init__(max_tag_value_length)  # type: ignore[arg-type]
        self._constant_tags: dict[tuple[int, int], tuple[typing.Any, ...]] = {}

    def serialize(  # type: ignore[override]
        self, spans: typing.Sequence[ReadableSpan], local_endpoint: typing.Any
    ) -> bytes:
        """The request body for *spans*: a JSON list of Zipkin v2 spans.

        :param spans: finished spans
        :param local_endpoint: the exporter's ``NodeEndpoint``
        """
        endpoint = self._encode_local_endpoint(local_endpoint)
        return dumps([self._encode_span(span, endpoint) for span in spans])

    def _extract_tags_from_dict(self, tags_dict: typing.Any) -> dict[str, str]:
        if not tags_dict:
            return {}
        limit: int | None = self.max_tag_value_length
        if not limit or limit <= 0:
            limit = None
        tags: dict[str, str] = {}
        rest: dict[str, typing.Any] = {}
        for key, value in tags_dict.items():
            kind = type(value)
            if kind is str:
                tags[key] = value[:limit]
            elif kind is int or kind is float:
                tags[key] = str(value)[:limit]
            else:
                rest[key] = value
                tags[key] = ""  # keeps the key's position
        if rest:
            converted = super()._extract_tags_from_dict(rest)
            for key in rest:
                if key in converted:
                    tags[key] = converted[key]
                else:
                    del tags[key]
        return tags

    def _extract_tags_from_span(  # type: ignore[override]
        self, span: ReadableSpan
    ) -> dict[str, str]:
        resource = span.resource
        scope = span.instrumentation_scope
        cache_key = (id(resource), id(scope))
        cached = self._constant_tags.get(cache_key)
        # The cache holds the resource and scope, so their ids stay unique.
        if cached is None or cached[0] is not resource or cached[1] is not scope:
            constant: dict[str, str] = {}
            if resource:
                constant.update(self._extract_tags_from_dict(resource.attributes))
            if scope is not None:
                constant.update(
                    {
                        "otel.library.name": scope.name,
                        "otel.library.version": scope.version,  # type: ignore[dict-item]
                        "otel.scope.name": scope.name,
                        "otel.scope.version": scope.version,  # type: ignore[dict-item]
                    }
                )
            if len(self._constant_tags) >= 64:
                self._constant_tags.clear()
            cached = (resource, scope, constant)
            self._constant_tags[cache_key] = cached
        tags = self._extract_tags_from_dict(span.attributes)
        tags.update(cached[2])
        status = span.status
        if status.status_code is not StatusCode.UNSET:
            tags["otel.status_code"] = status.status_code.name
            if status.status_code is StatusCode.ERROR:
                tags["error"] = status.description or ""
        if span.dropped_attributes:
            tags["otel.dropped_attributes_count"] = str(span.dropped_attributes)
        if span.dropped_events:
            tags["otel.dropped_events_count"] = str(span.dropped_events)
        if span.dropped_links:
            tags["otel.dropped_links_count"] = str(span.dropped_links)
        return tags

    def _encode_span(  # type: ignore[override]
        self, span: ReadableSpan, encoded_local_endpoint: dict
    ) -> dict:
        encoded = super()._encode_span(span, encoded_local_endpoint)  # type: ignore[arg-type]
        if encoded.get("kind") is None:
            encoded.pop("kind", None)
        encoded.pop("debug", None)
        attributes = span.attributes or {}
        tags = encoded.get("tags")
        if tags is not None:
            tags.pop(B3_DEBUG_ATTRIBUTE, None)
            if SERVICE_NAME in span.resource.attributes:
                tags.pop(SERVICE_NAME, None)  # the resource's: localEndpoint
            if tags.get("error") == "":
                tags["error"] = str(attributes.get("error.type") or "error")
            if not tags:
                del encoded["tags"]
        if attributes.get(B3_DEBUG_ATTRIBUTE):
            encoded["debug"] = True
        if span.kind is trace.SpanKind.CLIENT and "server.address" in attributes:
            peer = attributes.get("peer.service")
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["server.address"]),
                attributes.get("server.port"),
                str(peer or attributes["server.address"]),
            )
        elif span.kind is trace.SpanKind.SERVER and "client.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["client.address"]), attributes.get("client.port"), None
            )
        if encoded.get("duration", 1) < 1:
            encoded["duration"] = 1
        return encoded
