"""Recording chosen HTTP headers on spans, with secrets redacted.

Nothing is recorded unless the application lists header names in its
settings, or the deployment sets OpenTelemetry's
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*`` environment variables (see
:class:`CapturedHeaders`).  The lists are read once per application, so an
application that captures nothing pays nothing per request.
"""

from __future__ import annotations

import os
import re
import typing

# The headers whose values are never recorded, whatever the settings say,
# are divak's one list (divak.redaction), shared with logs and reports.
from divak.redaction import REDACTED, REDACTED_HEADERS

__all__ = ["CapturedHeaders", "REDACTED", "REDACTED_HEADERS"]

#: Longest recorded header value, in characters; longer values are cut.
MAX_VALUE_LENGTH = 256

_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"


class CapturedHeaders:
    """The headers an application records on its spans.

    Application settings (each an iterable of header names, matched
    without regard to case; default: none):

    ``divak_capture_request_headers``
        request headers, recorded as ``http.request.header.<name>``
    ``divak_capture_response_headers``
        response headers, recorded as ``http.response.header.<name>``

    Both apply to SERVER spans (the request the service answers) and CLIENT
    spans (:meth:`divak.HttpClientMixin.send_request`).  As the HTTP
    semantic conventions say, ``<name>`` is the lower-case header name and
    the value a list of strings, one per header line.  ``Authorization``,
    ``Cookie``, ``Set-Cookie``, ``Proxy-Authorization``, ``X-Api-Key`` and
    ``X-Auth-Token`` (:data:`divak.redaction.REDACTED_HEADERS`) are always
    recorded as ``REDACTED``; other values are cut to 256 characters.

    When a setting is not given, OpenTelemetry's environment variables
    apply, as in its HTTP instrumentations: each a comma-separated list of
    regular expressions that must match a whole header name, case
    ignored.

    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST`` and ``_RESPONSE``
        the headers of SERVER spans
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST`` and ``_RESPONSE``
        the headers of CLIENT spans
    ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS``
        regular expressions *found* in a header name (case ignored) whose
        values are recorded as ``REDACTED``, in addition to the four above;
        applies to headers captured by settings too

    :param settings: the application's settings
    :param kind: ``"server"`` or ``"client"``: which environment variables
        apply
    :raises ValueError: for another *kind*
    :raises re.error: when an environment variable holds an invalid
        regular expression

    .. attribute:: request

       What request headers are recorded: true when any is.

    .. attribute:: response

       What response headers are recorded: true when any is.
    """

    __slots__ = ("request", "response", "sanitize")

    def __init__(
        self, settings: typing.Mapping[str, typing.Any], kind: str = "server"
    ) -> None:
        if kind not in ("server", "client"):
            raise ValueError(f"kind must be 'server' or 'client', not {kind!r}")
        prefix = _ENV + kind.upper()
        self.request = _selection(
            settings.get("divak_capture_request_headers"), prefix + "_REQUEST"
        )
        self.response = _selection(
            settings.get("divak_capture_response_headers"), prefix + "_RESPONSE"
        )
        patterns = _env_list(_ENV + "SANITIZE_FIELDS")
        self.sanitize = re.compile("|".join(patterns), re.I) if patterns else None

    def request_attributes(self, headers: typing.Any) -> dict[str, list[str]]:
        """Span attributes for the listed request *headers*.

        :param headers: a :class:`tornado.httputil.HTTPHeaders`
        """
        return _attributes("http.request.header.", self.request, self.sanitize, headers)

    def response_attributes(self, headers: typing.Any) -> dict[str, list[str]]:
        """Span attributes for the listed response *headers*.

        :param headers: a :class:`tornado.httputil.HTTPHeaders`
        """
        return _attributes(
            "http.response.header.", self.response, self.sanitize, headers
        )


class _Selection(typing.NamedTuple):
    names: tuple[str, ...]
    pattern: re.Pattern[str] | None

    def __bool__(self) -> bool:
        return bool(self.names or self.pattern)


def _selection(setting: typing.Any, variable: str) -> _Selection:
    if setting is not None:
        return _Selection(_names(setting), None)
    patterns = _env_list(variable)
    if not patterns:
        return _Selection((), None)
    return _Selection((), re.compile("|".join(patterns), re.I))


def _env_list(variable: str) -> list[str]:
    value = os.environ.get(variable, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def _names(value: typing.Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(str(name).strip().lower() for name in value))


def _attributes(
    prefix: str,
    selection: _Selection,
    sanitize: re.Pattern[str] | None,
    headers: typing.Any,
) -> dict[str, list[str]]:
    if selection.pattern is not None:
        names = tuple(
            dict.fromkeys(
                name.lower() for name in headers if selection.pattern.fullmatch(name)
            )
        )
    else:
        names = selection.names
    attributes: dict[str, list[str]] = {}
    for name in names:
        values = headers.get_list(name)
        if not values:
            continue
        if name in REDACTED_HEADERS or (sanitize is not None and sanitize.search(name)):
            values = [REDACTED for _ in values]
        else:
            values = [value[:MAX_VALUE_LENGTH] for value in values]
        attributes[prefix + name] = values
    return attributes
