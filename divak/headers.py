"""Recording chosen HTTP headers on spans, with secrets redacted.

Nothing is recorded unless the application lists header names in its
settings (see :class:`CapturedHeaders`).  The lists are read once per
application, so an application that captures nothing pays nothing per
request.
"""

from __future__ import annotations

import typing

__all__ = ["CapturedHeaders", "REDACTED", "REDACTED_HEADERS", "captured_headers"]

#: What a redacted value is replaced with.
REDACTED = "REDACTED"

#: Headers whose values are never recorded, whatever the settings say.
REDACTED_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization"}
)

#: Longest recorded header value, in characters; longer values are cut.
MAX_VALUE_LENGTH = 256


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
    ``Cookie``, ``Set-Cookie`` and ``Proxy-Authorization`` are always
    recorded as ``REDACTED``; other values are cut to 256 characters.

    :param settings: the application's settings
    """

    __slots__ = ("request", "response")

    def __init__(self, settings: typing.Mapping[str, typing.Any]) -> None:
        self.request = _names(settings.get("divak_capture_request_headers"))
        self.response = _names(settings.get("divak_capture_response_headers"))

    def request_attributes(self, headers: typing.Any) -> dict[str, list[str]]:
        """Span attributes for the listed request *headers*.

        :param headers: a :class:`tornado.httputil.HTTPHeaders`
        """
        return _attributes("http.request.header.", self.request, headers)

    def response_attributes(self, headers: typing.Any) -> dict[str, list[str]]:
        """Span attributes for the listed response *headers*.

        :param headers: a :class:`tornado.httputil.HTTPHeaders`
        """
        return _attributes("http.response.header.", self.response, headers)


def captured_headers(application: typing.Any) -> CapturedHeaders:
    """Return *application*'s :class:`CapturedHeaders`, computed once."""
    captured = application.__dict__.get("_divak_captured_headers")
    if captured is None:
        captured = CapturedHeaders(application.settings)
        application._divak_captured_headers = captured
    return captured


def _names(value: typing.Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(str(name).strip().lower() for name in value))


def _attributes(
    prefix: str, names: tuple[str, ...], headers: typing.Any
) -> dict[str, list[str]]:
    attributes: dict[str, list[str]] = {}
    for name in names:
        values = headers.get_list(name)
        if not values:
            continue
        if name in REDACTED_HEADERS:
            values = [REDACTED for _ in values]
        else:
            values = [value[:MAX_VALUE_LENGTH] for value in values]
        attributes[prefix + name] = values
    return attributes
