"""The Zipkin encoder's short paths give exactly the library's tags."""

from __future__ import annotations

from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from divak.export.reporters import ZipkinV2Encoder
from divak.testing import SpanRecorder


def spans_of_every_shape() -> list:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    recorder = SpanRecorder()
    for service in ("one", "two"):
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "deployment": 3})
        )
        provider.add_span_processor(SimpleSpanProcessor(recorder))
        for scope in ("divak", "other"):
            tracer = provider.get_tracer(scope, "1.0")
            span = tracer.start_span("plain", kind=SpanKind.SERVER)
            span.set_attributes(
                {
                    "s": "x" * 300,
                    "i": 7,
                    "f": 1.5,
                    "b": True,
                    "list": ["a", "b"],
                    "ints": [1, 2, 3],
                    "empty": [],
                    "service.name": "attribute loses to the resource",
                }
            )
            span.add_event("event", {"k": "v"})
            span.set_status(Status(StatusCode.ERROR, "broken"))
            span.end()
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                child.set_attribute("server.address", "10.0.0.1")
                child.set_status(Status(StatusCode.OK))
    return recorder.spans


def test_tags_match_the_library_encoder():
    spans = spans_of_every_shape()
    for limit in (None, 128, 5, 1):
        ours = ZipkinV2Encoder(limit)
        reference = JsonV2Encoder(limit)
        for span in spans:
            expected = JsonV2Encoder._extract_tags_from_span(reference, span)
            got = ours._extract_tags_from_span(span)
            assert got == expected
            assert list(got) == list(expected)


def test_fast_json_gives_the_same_document(monkeypatch):
    import json

    import pytest
    from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint

    from divak.export import zipkin

    pytest.importorskip("orjson")
    spans = spans_of_every_shape()
    node = NodeEndpoint()
    node.service_name = "svc"
    fast = zipkin.ZipkinV2Encoder(128).serialize(spans, node)
    monkeypatch.setattr(zipkin, "_orjson", None)
    standard = zipkin.ZipkinV2Encoder(128).serialize(spans, node)
    assert isinstance(fast, bytes) and isinstance(standard, bytes)
    assert json.loads(fast) == json.loads(standard)
    assert len(json.loads(fast)) == len(spans)
