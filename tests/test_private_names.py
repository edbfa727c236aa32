"""The private names of other packages that divak uses, each watched here.

divak uses a private name of a dependency only where no public way exists.
Each such name is used in one module, commented there, and listed in
:data:`WATCHED`; a test below fails loudly when a release of the dependency
renames or changes it, and :func:`test_no_private_name_is_unwatched` fails
when divak's code starts using one that is not listed.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import logging
import pathlib
import socket
import warnings

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from tornado import http1connection, httpclient, httputil, iostream, web

import divak
from divak import semconv
from divak.lifecycle.server import _has_pending_request
from divak.propagation.tracecontext import TraceContextPropagation
from tests.conftest import listen, run

ROOT = pathlib.Path(divak.__file__).parent

#: (divak module, private name of another package) -> the test watching it.
WATCHED = {
    ("divak.lifecycle.server", "_read_buffer_size"): (
        "test_iostream_counts_buffered_bytes_in_read_buffer_size"
    ),
    ("divak.export.queue", "_SUPPRESS_INSTRUMENTATION_KEY"): (
        "test_opentelemetry_has_the_suppress_instrumentation_key"
    ),
    ("divak.semconv", "_reason"): "test_request_handler_keeps_its_reason",
    ("divak.tracing.pipeline", "_HandlerDelegate"): (
        "test_tornado_handler_delegate_says_whether_it_streams"
    ),
    ("divak.logs.export", "_logs"): "test_opentelemetry_logs_keeps_its_names",
    ("divak.logs.export", "_log_exporter"): "test_opentelemetry_logs_keeps_its_names",
    ("divak.metrics.bound", "_measurement_consumer"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_reader_storages"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_sdk_config"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_instrument_view_instrument_matches"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_view"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_attribute_keys"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_attributes_aggregation"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_attributes"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
    ("divak.metrics.bound", "_internal"): (
        "test_opentelemetry_metrics_keeps_what_bound_recording_uses"
    ),
}

#: Names that start with an underscore but are documented, public API.
DOCUMENTED = {"_exit"}  # os._exit


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _private(name: str) -> bool:
    # "_divak..." names are divak's own marks on foreign objects.
    return (
        name.startswith("_")
        and not name.startswith(("__", "_divak"))
        and name not in DOCUMENTED
    )


def private_names_in(path: pathlib.Path, module: str) -> set[tuple[str, str]]:
    """(module, name) for each private name of another package *path* uses.

    Found in the source: ``obj._name`` (``self`` and ``cls`` aside),
    ``getattr``/``hasattr``/``setattr`` with a private name, and
    ``from package import _name`` or ``from package._module import ...``
    of a package other than divak.
    """
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.add((module, node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and _private(str(node.args[1].value))
        ):
            found.add((module, str(node.args[1].value)))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and not node.module.startswith("divak")
        ):
            found.update((module, p) for p in node.module.split(".") if _private(p))
            found.update(
                (module, alias.name) for alias in node.names if _private(alias.name)
            )
    return found


def private_names_used() -> set[tuple[str, str]]:
    """:func:`private_names_in` for every module of divak."""
    found: set[tuple[str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        found |= private_names_in(path, _module_name(path))
    return found


def test_no_private_name_is_unwatched() -> None:
    assert private_names_used() - WATCHED.keys() == set()


@functools.cache
def _source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # built in
        return ""


def inherited_private_names() -> set[tuple[str, str]]:
    """(module, name) for each private name of another package's base class
    that a divak class reads, sets or overrides through ``self``.

    A name counts when the base class defines it or its source mentions
    ``self.<name>``.
    """
    found: set[tuple[str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        if name.endswith("__main__"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # divak.log
            module = importlib.import_module(name)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = vars(module).get(node.name)
            if not isinstance(cls, type):
                continue
            used = {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
            } | {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            for base in cls.__mro__[1:]:
                if base is object or base.__module__.startswith("divak"):
                    continue
                found.update(
                    (name, attribute)
                    for attribute in used
                    if _private(attribute)
                    and (
                        attribute in vars(base) or f"self.{attribute}" in _source(base)
                    )
                )
    return found


def test_no_private_name_of_a_base_class_is_used() -> None:
    # TraceState._dict, ZipkinExporter._closed, AsyncHTTPTestCase._app and
    # JsonV2Encoder._encode_span were used this way; none is any more.
    assert inherited_private_names() - WATCHED.keys() == set()


def test_every_watched_name_has_its_test() -> None:
    assert set(WATCHED.values()) <= set(globals())


def test_the_scan_sees_private_attributes_and_imports(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "from pkg._impl import thing\n"
        "from pkg import _hidden\n"
        "from divak.propagation._common import B3_DEBUG_ATTRIBUTE\n"
        "class C:\n"
        "    def f(self, x):\n"
        "        self._mine = x._theirs + getattr(x, '_probed', 0)\n"
        "        x._divak = True\n"
        "        os._exit(0)\n"
    )
    assert {name for _, name in private_names_in(probe, "probe")} == {
        "_impl",
        "_hidden",
        "_theirs",
        "_probed",
    }


def test_iostream_counts_buffered_bytes_in_read_buffer_size() -> None:
    # divak.lifecycle.server: the drain answers a request pipelined behind
    # the previous one, which IOStream already read into its buffer; Tornado
    # has no public way to ask whether the buffer holds bytes.
    assert isinstance(iostream.IOStream(socket.socket())._read_buffer_size, int)

    async def scenario() -> tuple[bytes, bool]:
        ours, theirs = socket.socketpair()
        stream = iostream.IOStream(ours)
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        first = await stream.read_until(b"\r\n\r\n")
        # the second request is in IOStream's buffer now, not in the socket
        pending = _has_pending_request(http1connection.HTTP1ServerConnection(stream))
        stream.close()
        theirs.close()
        return first, pending

    assert run(scenario()) == (b"GET / HTTP/1.1\r\n\r\n", True)


def test_opentelemetry_has_the_suppress_instrumentation_key() -> None:
    # divak.export.queue sets it while a reporter uploads, so that an
    # instrumented HTTP library makes no span of the upload.  The public
    # helpers live in opentelemetry-instrumentation, not a dependency.
    key = otel_context._SUPPRESS_INSTRUMENTATION_KEY
    assert isinstance(key, str)
    utils = pytest.importorskip("opentelemetry.instrumentation.utils")
    token = otel_context.attach(otel_context.set_value(key, True))
    try:
        assert utils.is_instrumentation_enabled() is False
    finally:
        otel_context.detach(token)
    assert utils.is_instrumentation_enabled() is True


def test_request_handler_keeps_its_reason() -> None:
    # divak.semconv.response_reason reads the custom reason phrase from it,
    # for the access log's combined format and the error documents.
    assert "_reason" in inspect.getsource(web.RequestHandler.set_status)

    class Teapot(web.RequestHandler):
        def get(self) -> None:
            seen = [semconv.response_reason(self)]  # set by __init__
            self.set_status(599)
            seen.append(semconv.response_reason(self))
            self.set_status(418, "Short and stout")
            seen.append(semconv.response_reason(self))
            self.write({"seen": seen})

    async def scenario() -> httpclient.HTTPResponse:
        port = listen(web.Application([(r"/", Teapot)]))
        return await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/", raise_error=False
        )

    response = run(scenario())
    assert json.loads(response.body) == {
        "seen": ["OK", "Unknown", "Short and stout"]
    }
    assert (response.code, response.reason) == (418, "Short and stout")


def test_level_2_trace_state_implements_every_public_method() -> None:
    # divak.propagation.tracecontext keeps Level 2 members in a TraceState
    # subclass of its own, without the base class's private mapping: a
    # public method OpenTelemetry adds would read that (empty) mapping.
    state = TraceContextPropagation.parse_tracestate("1vendor=x,foo@=y")
    own = vars(type(state))
    methods = {
        name
        for name, value in vars(trace.TraceState).items()
        if callable(value) or isinstance(value, (classmethod, staticmethod, property))
    }
    assert methods - {"__init__"} - set(own) == set()
    assert dict(state.items()) == {"1vendor": "x", "foo@": "y"}
    assert state.to_header() == "1vendor=x,foo@=y"


def test_opentelemetry_logs_keeps_its_names() -> None:
    # divak.logs.export: OpenTelemetry Python's logs signal lives in
    # private-named modules (opentelemetry._logs, opentelemetry.sdk._logs,
    # the OTLP exporter's _log_exporter); there is no public name for it.
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    from divak.logs.export import ConsoleLogRecordExporter  # either SDK name

    assert callable(_logs.get_logger_provider) and callable(_logs.set_logger_provider)
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(ConsoleLogRecordExporter())
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert isinstance(LoggingHandler(logger_provider=provider), logging.Handler)
    provider.shutdown()
    exporter = pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.http._log_exporter"
    )
    assert isinstance(exporter.OTLPLogExporter, type)


def test_tornado_handler_delegate_says_whether_it_streams() -> None:
    # divak.tracing.pipeline needs the request's context around Tornado's
    # headers_received only when the handler starts there (it streams the
    # request body): the delegate Tornado's Application makes says which.
    @web.stream_request_body
    class Streaming(web.RequestHandler):
        def data_received(self, chunk: bytes) -> None:
            pass

    class Whole(web.RequestHandler):
        def get(self) -> None:
            pass

    app = web.Application([(r"/s", Streaming), (r"/w", Whole)])
    start = httputil.RequestStartLine("GET", "/w", "HTTP/1.1")
    request = httputil.HTTPServerRequest(
        start_line=start, headers=httputil.HTTPHeaders({"Host": "127.0.0.1"})
    )
    streaming = app.get_handler_delegate(request, Streaming)
    whole = app.get_handler_delegate(request, Whole)
    assert isinstance(streaming, web._HandlerDelegate)
    assert isinstance(whole, web._HandlerDelegate)
    assert (streaming.stream_request_body, whole.stream_request_body) == (True, False)
    # A delegate whose handler does not stream starts nothing on the headers.
    assert whole.headers_received(start, request.headers) is None
    assert "handler" not in vars(whole)


def test_opentelemetry_metrics_keeps_what_bound_recording_uses() -> None:
    # divak.metrics.bound records an attribute set's measurements straight
    # into the SDK's aggregations of the set; when these internals change
    # it records through Histogram.record instead, correct but slower.
    from opentelemetry.sdk.metrics import MeterProvider, TraceBasedExemplarFilter
    from opentelemetry.sdk.metrics._internal.measurement import Measurement
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from divak.metrics.bound import BoundHistogram

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    histogram = provider.get_meter("watch").create_histogram("watched")
    attributes = {"http.route": "/a"}
    histogram.record(0.5, attributes)
    consumer = histogram._measurement_consumer
    assert type(consumer._sdk_config.exemplar_filter) is TraceBasedExemplarFilter
    [storage] = consumer._reader_storages.values()
    [match] = storage._instrument_view_instrument_matches[histogram]
    assert match._view._attribute_keys is None
    [aggregation] = match._attributes_aggregation.values()
    assert aggregation._attributes == attributes
    measurement = Measurement(1.5, 0, histogram, otel_context.get_current(), None)
    aggregation.aggregate(measurement, False)
    bound = BoundHistogram("watched", histogram, owned=True)
    bound_set = bound.set_of(attributes)
    bound.record(bound_set, 2.0)  # the set's first measurement through divak
    assert bound_set.aggregations == (aggregation,)
    bound.record(bound_set, 3.0)
    data = reader.get_metrics_data()
    assert data is not None
    [point] = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert (point.count, point.sum) == (4, 7.0)
    provider.shutdown()
