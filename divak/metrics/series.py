"""Attribute sets of divak's instruments: built once, bounded, counted.

Per request, divak looks an attribute set up by a small key (method,
route, status...) instead of building a dictionary; each instrument keeps
at most a cardinality limit of sets (the OpenTelemetry Python SDK has no
limit of its own), and beyond it records under :data:`OVERFLOW_ATTRIBUTES`
as the OpenTelemetry metrics SDK specification says.  Attribute values
handlers give are cut to :data:`MAX_VALUE_LENGTH` characters, and at most
:data:`MAX_ATTRIBUTES` of them are kept.

A key holds the values of the attribute set it stands for, never the raw
input: a method outside the known set is ``_OTHER`` in the key as in the
attributes (HTTP semantic conventions), and text is cut before it becomes
part of a key.  So a client that sends thousands of made-up methods, or a
handler that names operations after its input, costs at most one set per
distinct *attribute* set, each of bounded size, and cannot push real
series past the cardinality limit.
"""

from __future__ import annotations

import logging
import operator
import typing

from divak.semconv import KNOWN_METHODS

__all__ = [
    "DURATION_BUCKETS",
    "MAX_ATTRIBUTES",
    "MAX_VALUE_LENGTH",
    "OVERFLOW_ATTRIBUTES",
    "Series",
    "client_attributes",
    "custom_attributes",
    "key_text",
    "method_attribute",
    "server_attributes",
]

logger = logging.getLogger("divak.metrics")

Attributes = typing.Mapping[str, typing.Any]

#: Bucket boundaries (seconds) the HTTP semantic conventions recommend for
#: ``http.server.request.duration`` and ``http.client.request.duration``.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

#: The attribute set a measurement is recorded under once its instrument
#: reached the cardinality limit (OpenTelemetry metrics SDK specification).
OVERFLOW_ATTRIBUTES: typing.Mapping[str, typing.Any] = {"otel.metric.overflow": True}

#: Longest attribute value or name kept (characters); longer strings are
#: cut (well within :data:`divak.semconv.MAX_TEXT_LENGTH`).
MAX_VALUE_LENGTH = 128
#: Most attributes a handler may add to one event or value; more are dropped.
MAX_ATTRIBUTES = 8

_first = operator.itemgetter(0)


class Series:
    """The bound attribute sets of one instrument, at most *limit* of them.

    :param instrument: the instrument's name, for the warning
    :param limit: most attribute sets; more are folded into
        :data:`OVERFLOW_ATTRIBUTES`, with one WARNING
    """

    __slots__ = ("instrument", "limit", "bound", "warned")

    def __init__(self, instrument: str, limit: int) -> None:
        self.instrument = instrument
        self.limit = limit
        self.bound: dict[typing.Hashable, Attributes] = {}
        self.warned = False

    def bind(
        self, key: typing.Hashable, build: typing.Callable[[], Attributes]
    ) -> Attributes:
        """The attribute set of *key*, built by *build* the first time."""
        attributes = self.bound.get(key)
        if attributes is not None:
            return attributes
        if len(self.bound) >= self.limit:
            if not self.warned:
                self.warned = True
                logger.warning(
                    "%s reached %d attribute sets: new ones are recorded as"
                    " otel.metric.overflow=true",
                    self.instrument,
                    self.limit,
                )
            return OVERFLOW_ATTRIBUTES
        attributes = self.bound[key] = build()
        return attributes


def bounded(value: typing.Any) -> typing.Any:
    """*value*, or its text cut to :data:`MAX_VALUE_LENGTH` characters."""
    if isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_VALUE_LENGTH]


@typing.overload
def key_text(value: str) -> str: ...
@typing.overload
def key_text(value: None) -> None: ...
@typing.overload
def key_text(value: str | None) -> str | None: ...


def key_text(value: str | None) -> str | None:
    """*value* cut to :data:`MAX_VALUE_LENGTH` characters, as keys hold it."""
    if value is None or len(value) <= MAX_VALUE_LENGTH:
        return value
    return value[:MAX_VALUE_LENGTH]


def method_attribute(method: str | None) -> str:
    """``http.request.method``: a known method, else ``_OTHER``.

    The HTTP semantic conventions' rule for metrics: the method a client
    sent, when it is not one of :data:`divak.semconv.KNOWN_METHODS`, never
    becomes an attribute value (``http.request.method_original`` is for
    spans only).
    """
    method = method or "GET"
    return method if method in KNOWN_METHODS else "_OTHER"


def server_attributes(
    method: str | None,
    route: str | None,
    status_code: int | None,
    error_type: str | None,
    scheme: str,
    version: str,
) -> Attributes:
    """The attributes of ``http.server.request.duration``."""
    attributes: dict[str, typing.Any] = {
        "http.request.method": method_attribute(method),
        "url.scheme": scheme,
        "network.protocol.version": version.partition("/")[2] or "1.1",
    }
    if route:
        attributes["http.route"] = bounded(route)
    if status_code is not None:
        attributes["http.response.status_code"] = status_code
    if error_type:
        attributes["error.type"] = bounded(error_type)
    return attributes


def client_attributes(
    method: str,
    host: str,
    port: int,
    status_code: int | None,
    error_type: str | None,
    protocol_version: str | None = None,
) -> Attributes:
    """The attributes of ``http.client.request.duration``."""
    attributes: dict[str, typing.Any] = {
        "http.request.method": method_attribute(method),
        "server.address": bounded(host),
        "server.port": port,
    }
    if protocol_version:
        attributes["network.protocol.version"] = bounded(protocol_version)
    if status_code is not None:
        attributes["http.response.status_code"] = status_code
    if error_type:
        attributes["error.type"] = bounded(error_type)
    return attributes


def custom_attributes(
    instrument: str, fixed: Attributes, attributes: Attributes | None
) -> tuple[typing.Hashable, typing.Callable[[], Attributes]]:
    """The key and the builder of a handler-given attribute set.

    The key is made of the bounded names and values the set will hold (at
    most :data:`MAX_ATTRIBUTES` of the given ones, by name, then *fixed*),
    so two inputs that differ only beyond the bounds share one set.
    """
    pairs = tuple((k, bounded(v)) for k, v in fixed.items())
    given = 0
    extra: tuple[tuple[str, typing.Any], ...] = ()
    if attributes:
        given = len(attributes)
        extra = tuple(
            sorted(
                (
                    (str(k)[:MAX_VALUE_LENGTH], bounded(v))
                    for k, v in attributes.items()
                ),
                key=_first,
            )[:MAX_ATTRIBUTES]
        )

    def build() -> Attributes:
        if given > MAX_ATTRIBUTES:
            logger.warning(
                "%s: keeping %d of %d attributes", instrument, MAX_ATTRIBUTES, given
            )
        built = dict(extra)
        built.update(pairs)  # a handler's attribute never replaces divak's
        return built

    return (pairs, extra), build
