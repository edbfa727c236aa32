"""Reporters: where finished spans go.

A reporter is an OpenTelemetry
:class:`~opentelemetry.sdk.trace.export.SpanExporter`.  An application runs
each of its reporters behind its own
:class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor`, so exporting
happens on a background thread and never on the IOLoop.  Any OpenTelemetry
exporter can be added as a reporter, too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
import typing

import requests
from opentelemetry import trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["LoggingReporter", "ZipkinReporter", "B3_DEBUG_ATTRIBUTE"]

logger = logging.getLogger(__name__)

#: Span attribute that marks a span of a B3 *debug* trace.  divak sets it,
#: and :class:`ZipkinReporter` turns it into ``"debug": true`` instead of
#: exporting it as a tag.
B3_DEBUG_ATTRIBUTE = "divak.b3.debug"

_ENDPOINT_ENV = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
_DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"


def _endpoint(address: str, port: typing.Any) -> dict[str, typing.Any]:
    endpoint: dict[str, typing.Any] = {}
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        endpoint["serviceName"] = address
    else:
        endpoint["ipv4" if ip.version == 4 else "ipv6"] = str(ip)
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
      ``server.port``, SERVER spans from ``client.address``;
    * ``duration`` is at least one microsecond, as the schema requires.
    """

    def _encode_span(self, span: ReadableSpan, encoded_local_endpoint: dict) -> dict:
        encoded = super()._encode_span(span, encoded_local_endpoint)
        if encoded.get("kind") is None:
            encoded.pop("kind", None)
        encoded.pop("debug", None)
        attributes = span.attributes or {}
        tags = encoded.get("tags")
        if tags is not None and B3_DEBUG_ATTRIBUTE in tags:
            del tags[B3_DEBUG_ATTRIBUTE]
        if attributes.get(B3_DEBUG_ATTRIBUTE):
            encoded["debug"] = True
        if span.kind is trace.SpanKind.CLIENT and "server.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["server.address"]), attributes.get("server.port")
            )
        elif span.kind is trace.SpanKind.SERVER and "client.address" in attributes:
            encoded["remoteEndpoint"] = _endpoint(
                str(attributes["client.address"]), attributes.get("client.port")
            )
        if encoded.get("duration", 1) < 1:
            encoded["duration"] = 1
        return encoded


class ZipkinReporter(ZipkinExporter):
    """Send spans to a Zipkin collector as Zipkin v2 JSON.

    Built on ``opentelemetry-exporter-zipkin-json`` with the encoding fixed
    to validate against the Zipkin v2 API (see :class:`ZipkinV2Encoder`).
    ``localEndpoint.serviceName`` is the application's service name.
    Uploads carry ``b3: 0`` so that a traced collector (or proxy) does not
    trace them.  A failed upload drops that batch; failures are logged as
    one WARNING line at most once a minute, never with a traceback.

    :param url: the collector, either its API base
        (``http://zipkin:9411/api/v2``, as divak-tornado writes it) or the
        full spans endpoint (``http://zipkin:9411/api/v2/spans``).
        :data:`None` reads the ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` environment
        variable, then falls back to ``http://localhost:9411/api/v2/spans``.
    :param timeout: seconds to wait for the collector per upload
    """

    def __init__(self, url: str | None = None, *, timeout: float = 5.0) -> None:
        if url is None:
            url = os.environ.get(_ENDPOINT_ENV) or _DEFAULT_ENDPOINT
        url = url.rstrip("/")
        if url.endswith("/api/v2"):
            url += "/spans"
        session = requests.Session()
        session.headers["b3"] = "0"
        super().__init__(endpoint=url, timeout=timeout, session=session)  # type: ignore[arg-type]
        self.encoder = ZipkinV2Encoder(self.encoder.max_tag_value_length)
        self.url = url
        self.exported_spans = 0
        self.failed_spans = 0
        self._last_complaint = 0.0
        self._lock = threading.Lock()

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Upload *spans*; on any failure count them as failed and go on."""
        try:
            result = super().export(spans)
        except requests.RequestException as error:
            self._complain("cannot reach Zipkin at %s: %s", self.url, error)
            result = SpanExportResult.FAILURE
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += len(spans)
            else:
                self.failed_spans += len(spans)
        return result

    def _complain(self, message: str, *args: typing.Any) -> None:
        now = time.monotonic()
        if now - self._last_complaint >= 60.0 or not self._last_complaint:
            self._last_complaint = now
            logger.warning(message, *args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LoggingReporter(SpanExporter):
    """Write one INFO line per finished span to the ``divak.spans`` logger.

    The line holds the service name, the span name, its kind, trace id,
    span id, parent span id and duration in milliseconds.  Handy in
    development; it is what an application reports to when no reporter
    was added and ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is not set.
    """

    def __init__(self, logger_name: str = "divak.spans") -> None:
        self.logger = logging.getLogger(logger_name)

    def export(self, spans: typing.Sequence[ReadableSpan]) -> SpanExportResult:
        """Log *spans*, one line each."""
        if not self.logger.isEnabledFor(logging.INFO):
            return SpanExportResult.SUCCESS
        for span in spans:
            context = span.get_span_context()
            parent = span.parent
            self.logger.info(
                "%s %s %s trace_id=%s span_id=%s parent_id=%s duration=%.3fms",
                span.resource.attributes.get("service.name", ""),
                span.kind.name,
                span.name,
                trace.format_trace_id(context.trace_id),
                trace.format_span_id(context.span_id),
                trace.format_span_id(parent.span_id) if parent else "-",
                ((span.end_time or 0) - (span.start_time or 0)) / 1e6,
            )
        return SpanExportResult.SUCCESS
