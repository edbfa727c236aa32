"""divak uses a few private names of its dependencies where no public one
exists; each test here fails loudly when a release renames one.

Each name is also commented where divak uses it.
"""

from __future__ import annotations

import inspect

from opentelemetry import trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from tornado import web

from divak.propagation.tracecontext import TraceContextPropagation


def test_trace_state_keeps_its_members_in_dict() -> None:
    # divak.propagation.tracecontext: Level 2 keys OpenTelemetry's
    # constructor would reject are set through this mapping.
    assert isinstance(trace.TraceState([("a", "1")])._dict, dict)
    state = TraceContextPropagation.parse_tracestate("1vendor=x,foo@=y")
    assert dict(state.items()) == {"1vendor": "x", "foo@": "y"}
    assert state.to_header() == "1vendor=x,foo@=y"


def test_zipkin_exporter_has_closed_and_encode_span() -> None:
    # divak.reporters / divak.zipkin build on these two.
    exporter = ZipkinExporter(endpoint="http://127.0.0.1:9/api/v2/spans")
    assert exporter._closed is False
    assert "encoded_local_endpoint" in inspect.signature(
        JsonV2Encoder._encode_span
    ).parameters


def test_otlp_exporter_has_endpoint() -> None:
    # divak.reporters.OTLPReporter.endpoint reads it.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert exporter._endpoint == "http://127.0.0.1:9/v1/traces"


def test_request_handler_keeps_the_reason_in_reason() -> None:
    # divak.access (combined format) and divak.mixins (error documents)
    # read the custom reason phrase from it.
    assert "_reason" in inspect.getsource(web.RequestHandler.set_status)
