"""OpenTelemetry HTTP semantic conventions for a Tornado request.

The SERVER span's name and attributes (stable HTTP conventions): one
function per concept, computed only for sampled requests.  And the HTTP
facts the rest of divak shares, each defined here once: the known methods,
the default ports, the statuses that ask to try again, reason phrases and
``error.type`` of an exception.
"""

from __future__ import annotations

import functools
import typing

from tornado import http1connection, httputil

from divak import redaction

if typing.TYPE_CHECKING:
    from tornado import web

__all__ = [
    "DEFAULT_PORTS",
    "KNOWN_METHODS",
    "MAX_TEXT_LENGTH",
    "RETRY_STATUSES",
    "bounded_text",
    "exception_type",
    "reason_phrase",
    "response_reason",
    "server_attributes",
    "span_name",
]

#: The methods the conventions name; any other is ``_OTHER``.
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
#: The port a URL scheme implies when a URL or ``Host`` names none.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Response statuses that say the same request may succeed later: 429 Too
#: Many Requests (RFC 6585), 502 Bad Gateway, 503 Service Unavailable and
#: 504 Gateway Timeout (RFC 9110).  The client's retry policy and the span
#: reporters retry on them.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

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


def response_reason(handler: web.RequestHandler) -> str:
    """The reason phrase *handler* sends (or sent) with its status.

    The custom ``reason`` given to ``set_status``, ``send_error`` or a
    :class:`~tornado.web.HTTPError`, else Tornado's standard phrase of the
    status (``"Unknown"`` for a code without one); ``""`` when the custom
    reason given was empty.  Used by the access log's combined format and
    by the error documents.

    :param handler: a :class:`tornado.web.RequestHandler`
    """
    # Tornado keeps the reason in a private attribute only, set by
    # RequestHandler.set_status (which its __init__ calls); this is divak's
    # one read of it, and tests/test_private_names.py fails if it changes.
    return handler._reason


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
    connection = request.connection
    if isinstance(connection, http1connection.HTTP1Connection):
        # A probe on a foreign object: Tornado's HTTPServer passes a context
        # of a private class that holds the accepted peer's address; another
        # server may pass anything, or nothing.
        peer = getattr(connection.context, "address", None)
        if isinstance(peer, tuple) and len(peer) >= 2:
            attributes["network.peer.address"] = str(peer[0])
            attributes["network.peer.port"] = peer[1]
    user_agent = headers.get("User-Agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent[:limit]
    return attributes
