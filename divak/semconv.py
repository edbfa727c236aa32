"""OpenTelemetry HTTP semantic conventions for a Tornado request.

The SERVER span's name and attributes (stable HTTP conventions): one
function per concept, computed only for sampled requests.
"""

from __future__ import annotations

import functools
import typing

from tornado import httputil

from divak import redaction

__all__ = [
    "DEFAULT_PORTS",
    "KNOWN_METHODS",
    "MAX_TEXT_LENGTH",
    "bounded_text",
    "exception_type",
    "reason_phrase",
    "server_attributes",
    "span_name",
]

#: The methods the conventions name; any other is ``_OTHER``.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
#: The port a URL scheme implies when a URL or ``Host`` names none.
DEFAULT_PORTS = {"http": 80, "https": 443}

#: Longest text, in characters, that divak lets reach a metric's attribute
#: set or a span's name from outside (a request, a handler's argument).
MAX_TEXT_LENGTH = 1024

#: Longest value, in characters, of a span attribute taken from the
#: request (``user_agent.original``, ``server.address``, ``url.path``...);
#: ``settings['divak_max_request_attribute_length']`` changes it.
MAX_REQUEST_ATTRIBUTE_LENGTH = 256


def bounded_text(value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """*value* cut to its first *limit* characters (itself when shorter).

    For text that becomes a metric attribute, a span name or any other key
    kept in memory: a client or a handler can make it arbitrarily long.

    :param value: the text
    :param limit: most characters kept, default :data:`MAX_TEXT_LENGTH`
    """
    return value if len(value) <= limit else value[:limit]


def reason_phrase(status_code: int) -> str:
    """The standard reason phrase of *status_code* (RFC 9110), ``"Unknown"``
    for a code that has none."""
    return httputil.responses.get(status_code, "Unknown")


def exception_type(value: BaseException) -> str:
    """``error.type`` of an exception: its fully qualified class name."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=1024)
def span_name(method: str, route: str | None) -> str:
    """``"{METHOD} {route}"`` (``HTTP`` for a method outside the known set)."""
    if method == "_OTHER":
        method = "HTTP"
    return f"{method} {route}" if route else method


def split_host(host: str) -> tuple[str, int | None]:
    """``Host`` header value to ``(address, port or None)``; IPv6 literals too."""
    if host.startswith("["):  # [IPv6]:port
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    return address, int(port) if port.isdigit() and len(port) <= 5 else None


def server_attributes(
    request: httputil.HTTPServerRequest,
    method: str,
    route: str | None,
    *,
    xheaders: bool,
    limit: int,
    redacted: typing.AbstractSet[str],
) -> dict[str, typing.Any]:
    """The SERVER span's attributes for *request*.

    :param method: the method, or ``"_OTHER"`` outside :data:`KNOWN_METHODS`
    :param route: the route template, or :data:`None`
    :param xheaders: take ``server.address`` from ``X-Forwarded-Host``
    :param limit: characters kept of each value taken from the request
    :param redacted: query parameter names whose values are redacted
    """
    headers = request.headers
    host = request.host
    if xheaders:
        host = headers.get("X-Forwarded-Host", host).split(",")[0].strip()
    address, port = split_host(host)
    attributes: dict[str, typing.Any] = {
        "http.request.method": method,
        "url.path": redaction.redact_uri(request.path, redacted)[:limit],
        "url.scheme": request.protocol,
        "server.address": address[:limit],
        "server.port": port or DEFAULT_PORTS.get(request.protocol, 80),
        "client.address": request.remote_ip,
        "network.protocol.version": request.version.partition("/")[2] or "1.1",
    }
    if request.query:
        attributes["url.query"] = redaction.redact_query(request.query, redacted)[
            :limit
        ]
    if method == "_OTHER":
        attributes["http.request.method_original"] = request.method[:limit]
    if route:
        attributes["http.route"] = route
    peer = getattr(getattr(request.connection, "context", None), "address", None)
    if isinstance(peer, tuple) and len(peer) >= 2:
        attributes["network.peer.address"] = str(peer[0])
        attributes["network.peer.port"] = peer[1]
    user_agent = headers.get("User-Agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent[:limit]
    return attributes
