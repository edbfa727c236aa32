"""divak's Zipkin encoder writes OpenTelemetry's document, with its deviations fixed.

OpenTelemetry's Zipkin JSON encoder (through its public ``serialize``) is
the reference: for spans of every shape, divak's document is the
reference's with exactly the corrections ``ZipkinV2Encoder`` documents,
and it validates against the Zipkin v2 schema.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import typing

import pytest
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from divak.export import zipkin_json
from divak.export.reporters import ZipkinV2Encoder
from divak.propagation._common import B3_DEBUG_ATTRIBUTE
from divak.testing import SpanRecorder
from tests.zipkin_schema import validate_spans


def spans_of_every_shape() -> list[ReadableSpan]:
    recorder = SpanRecorder()
    for service in ("One", "two"):
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "deployment": 3})
        )
        provider.add_span_processor(SimpleSpanProcessor(recorder))
        for scope, version in (("divak", "1.0"), ("other", None)):
            tracer = provider.get_tracer(scope, version)
            span = tracer.start_span("plain", kind=SpanKind.SERVER)
            span.set_attributes(
                {
                    "s": "x" * 300,
                    "i": 7,
                    "f": 1.5,
                    "b": True,
                    "list": ["a", "b", "a" * 20],
                    "ints": [1, 2, 3],
                    "flags": [True, False],
                    "empty": [],
                    "service.name": "attribute loses to the resource",
                    "client.address": "192.0.2.7",
                    "client.port": 50123,
                }
            )
            span.add_event("event", {"k": "v" * 200, "n": 2})
            span.add_event("bare")
            span.set_status(Status(StatusCode.ERROR, "broken"))
            span.end()
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                child.set_attribute("server.address", "10.0.0.1")
                child.set_status(Status(StatusCode.OK))
                with tracer.start_as_current_span("work") as internal:
                    internal.set_attribute(B3_DEBUG_ATTRIBUTE, True)
                    internal.set_attribute("error.type", "TimeoutError")
                    internal.set_status(Status(StatusCode.ERROR))
            named = tracer.start_span("call", kind=SpanKind.CLIENT)
            named.set_attributes(
                {
                    "server.address": "billing.internal",
                    "server.port": 8443,
                    "peer.service": "Billing",
                }
            )
            named.set_status(Status(StatusCode.ERROR))
            named.end(named.start_time)  # type: ignore[attr-defined]
            tracer.start_span("consume", kind=SpanKind.CONSUMER).end()
    return recorder.spans


def corrected(
    span: ReadableSpan, document: dict[str, typing.Any]
) -> dict[str, typing.Any]:
    """The library's document with the corrections ZipkinV2Encoder lists."""
    attributes = span.attributes or {}
    if document.get("kind") is None:
        document.pop("kind", None)
    document.pop("debug", None)
    if attributes.get(B3_DEBUG_ATTRIBUTE):
        document["debug"] = True
    tags = document.get("tags", {})
    tags.pop(B3_DEBUG_ATTRIBUTE, None)
    tags.pop("service.name", None)
    for key in [k for k, v in tags.items() if v is None]:  # a scope's version
        del tags[key]
    if tags.get("error") == "":
        tags["error"] = str(attributes.get("error.type") or "error")
    if not tags:
        document.pop("tags", None)
    document["duration"] = max(document["duration"], 1)
    endpoint = document["localEndpoint"]
    endpoint["serviceName"] = endpoint["serviceName"].lower()
    if document.get("kind") == "CLIENT" and "server.address" in attributes:
        address = str(attributes["server.address"])
        remote: dict[str, typing.Any] = {}
        if address[0].isdigit():
            remote["ipv4"] = address
        remote["serviceName"] = str(attributes.get("peer.service") or address).lower()
        if "server.port" in attributes:
            remote["port"] = attributes["server.port"]
        document["remoteEndpoint"] = remote
    if document.get("kind") == "SERVER" and "client.address" in attributes:
        document["remoteEndpoint"] = {
            "ipv4": attributes["client.address"],
            "port": attributes["client.port"],
        }
    return document


@pytest.mark.parametrize("limit", [None, 128, 5, 1])
def test_the_document_is_the_librarys_with_the_documented_corrections(
    limit: int | None,
) -> None:
    spans = spans_of_every_shape()
    ours = json.loads(ZipkinV2Encoder(limit).serialize(spans))
    assert len(ours) == len(spans)
    validate_spans(ours)
    reference = JsonV2Encoder(limit)  # type: ignore[arg-type]
    for span, encoded in zip(spans, ours, strict=True):
        node = NodeEndpoint()
        node.service_name = span.resource.attributes["service.name"]
        [expected] = json.loads(reference.serialize([span], node))
        assert encoded == corrected(span, expected), span.name


def test_the_corrections_are_visible() -> None:
    by_name: dict[str, list[dict[str, typing.Any]]] = {}
    for encoded in json.loads(ZipkinV2Encoder().serialize(spans_of_every_shape())):
        by_name.setdefault(encoded["name"], []).append(encoded)
    work = by_name["work"][0]
    assert "kind" not in work and work["debug"] is True
    assert work["tags"]["error"] == "TimeoutError"
    assert B3_DEBUG_ATTRIBUTE not in work["tags"]
    services = {s["localEndpoint"]["serviceName"] for s in by_name["plain"]}
    assert services == {"one", "two"}
    assert all("service.name" not in s["tags"] for s in by_name["plain"])
    assert all("debug" not in s for s in by_name["plain"])
    call = by_name["call"][0]
    assert call["duration"] == 1
    assert call["remoteEndpoint"] == {"serviceName": "billing", "port": 8443}


def test_fast_json_gives_the_same_document(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("orjson")
    spans = spans_of_every_shape()
    fast = zipkin_json.ZipkinV2Encoder(128).serialize(spans)
    monkeypatch.setattr(zipkin_json, "_orjson", None)
    standard = zipkin_json.ZipkinV2Encoder(128).serialize(spans)
    assert isinstance(fast, bytes) and isinstance(standard, bytes)
    assert json.loads(fast) == json.loads(standard)
    assert len(json.loads(fast)) == len(spans)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "count",
    [0, 1, zipkin_json.SLICE_SPANS, zipkin_json.SLICE_SPANS + 1, 300],
)
def test_a_batch_encoded_in_slices_is_one_list_of_every_span_in_order(
    monkeypatch: pytest.MonkeyPatch, count: int, fast: bool
) -> None:
    if fast:
        pytest.importorskip("orjson")
    else:
        monkeypatch.setattr(zipkin_json, "_orjson", None)
    shapes = spans_of_every_shape()
    spans = [shapes[n % len(shapes)] for n in range(count)]
    encoder = ZipkinV2Encoder(128)
    document = json.loads(encoder.serialize(spans))
    assert document == [encoder.encode_span(span) for span in spans]
    validate_spans(document)


def test_another_thread_runs_while_a_large_batch_is_encoded() -> None:
    """The encoder lets the interpreter go between slices, not only when
    the interpreter's switch interval forces it (here: never).  The body
    stays under 1 MB, above which joining bytes lets it go, too."""
    shapes = spans_of_every_shape()
    spans = [shapes[n % len(shapes)] for n in range(16 * zipkin_json.SLICE_SPANS)]
    encoder = ZipkinV2Encoder()
    encoding = threading.Event()
    done = threading.Event()
    ran: list[int] = []  # times the other thread ran during the encoding

    def other() -> None:  # the IOLoop, waiting to run
        while not done.is_set():
            if encoding.is_set():
                ran.append(1)
            time.sleep(0.0001)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    thread = threading.Thread(target=other)
    try:
        thread.start()
        encoding.set()
        body = encoder.serialize(spans)
        encoding.clear()
    finally:
        done.set()
        sys.setswitchinterval(switch_interval)
        thread.join(30)
    assert len(body) < 1_000_000
    assert ran  # 15 pauses: it ran in one at least
