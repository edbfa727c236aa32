"""Secrets out of URLs and headers before they reach a span, a log line,
an error document or an error report.

One set of rules, applied by every part of divak that shows a URL: the
access log (its URI and, in the combined format, its ``Referer``), the
error lines of :class:`divak.ErrorLogger`, the ``url.path``, ``url.query``
and ``url.full`` span attributes, the ``instance`` member of RFC 9457
problem documents and the Sentry events of :mod:`divak.integrations.sentry`.
A function per shape in which a URL reaches divak:

* :func:`redact_url` for an absolute URL (the ``url.full`` attribute of
  CLIENT spans);
* :func:`redact_uri` for a request target as Tornado gives it in
  ``request.uri`` or ``request.path`` (origin-form ``/a?b=c``,
  absolute-form ``http://user:pw@host/a``, authority-form ``host:443``,
  asterisk-form ``*``), and for a ``Referer``;
* :func:`redact_query` for a query string without its ``?`` (the
  ``url.query`` attribute);
* :func:`redact_header` for a header value (a credential header is
  replaced as a whole, a header that holds a URL is redacted as one).

What they do, as the OpenTelemetry HTTP semantic conventions ask for
``url.full``:

* the value of every query parameter whose name (percent-decoded, compared
  without regard to case) is in the redacted set becomes ``REDACTED``;
  parameters are separated by ``&`` or ``;``, and ``;`` parameters of path
  segments (``/a;jsessionid=...``) are treated the same way;
* user name and password become ``REDACTED:REDACTED``, in the authority
  and wherever ``//user:password@`` appears in the path or the query
  (``/proxy//user:pw@host/``, ``?next=http://user:pw@host/``), also
  percent-encoded (``%2F%2Fuser:pw%40host``);
* the fragment is dropped;
* a URL that cannot be parsed is replaced as a whole by
  :data:`INVALID_URL`, so malformed input never appears raw.

The redacted set is :data:`DEFAULT_REDACTED_QUERY_PARAMS`, which an
application extends with the setting ``divak_redacted_query_params`` (see
:func:`redacted_query_params`).
"""

from __future__ import annotations

import re
import typing
import urllib.parse

__all__ = [
    "DEFAULT_REDACTED_QUERY_PARAMS",
    "INVALID_URL",
    "REDACTED",
    "REDACTED_HEADERS",
    "SETTING",
    "URL_HEADERS",
    "redact_header",
    "redact_query",
    "redact_uri",
    "redact_url",
    "redacted_query_params",
]

#: What a secret value (or user name and password) is replaced with.
REDACTED = "REDACTED"

#: What an unparsable URL is replaced with, as a whole.
INVALID_URL = "<invalid url>"

#: The application setting that adds names to the redacted set.
SETTING = "divak_redacted_query_params"

#: Query parameter names whose values are redacted, lower case: the HTTP
#: semantic conventions' list (``AWSAccessKeyId``, ``Signature``, ``sig``,
#: ``X-Goog-Signature``), AWS pre-signed URL parameters, OAuth 2.0 and
#: OpenID Connect parameters, session ids and common credentials.
DEFAULT_REDACTED_QUERY_PARAMS: frozenset[str] = frozenset(
    name.lower()
    for name in (
        "AWSAccessKeyId",
        "Signature",
        "sig",
        "X-Goog-Signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "access_token",
        "api_key",
        "apikey",
        "x-api-key",
        "x_api_key",
        "auth",
        "auth_token",
        "client_secret",
        "code",
        "credentials",
        "id_token",
        "jwt",
        "key",
        "passwd",
        "password",
        "private_key",
        "private_token",
        "pwd",
        "refresh_token",
        "secret",
        "token",
        "sessionid",
        "session_id",
        "jsessionid",
        "phpsessid",
    )
)

#: Headers whose values are always replaced by :data:`REDACTED`, lower case.
REDACTED_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
    }
)

#: Headers whose values are URLs, redacted by :func:`redact_uri`, lower case.
URL_HEADERS: frozenset[str] = frozenset(
    {"referer", "location", "content-location", "origin"}
)

_USERINFO = f"{REDACTED}:{REDACTED}@"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986, section 3.1
# "//user:password@" inside a path or query, also percent-encoded; the user
# information never crosses a "/" (or "%2F"), "?", "#" or "@".
_INNER_USERINFO = re.compile(
    r"(//|%2[fF]%2[fF])((?:(?!%2[fF])[^/?#@])+?)(@|%40)"
)


def redacted_query_params(
    settings: typing.Mapping[str, typing.Any] | None = None,
) -> frozenset[str]:
    """The effective set of redacted parameter names of an application.

    Pass the result to the ``names`` argument of the other functions.
    Cheap: without the setting it is :data:`DEFAULT_REDACTED_QUERY_PARAMS`
    itself, with it one set union.

    :param settings: the application's settings; the names listed under
        ``divak_redacted_query_params`` (an iterable of :class:`str`, or
        one :class:`str`) are added to :data:`DEFAULT_REDACTED_QUERY_PARAMS`
    :returns: the names, lower case
    :raises TypeError: when the setting holds something else than names
    """
    extra = (settings or {}).get(SETTING)
    if not extra:
        return DEFAULT_REDACTED_QUERY_PARAMS
    if isinstance(extra, str):
        extra = (extra,)
    try:
        added = {name.lower() for name in extra}
    except (TypeError, AttributeError):
        raise TypeError(f"{SETTING} must be a list of names, not {extra!r}") from None
    return DEFAULT_REDACTED_QUERY_PARAMS | added


def _redact_params(text: str, names: typing.AbstractSet[str], first: int) -> str:
    """Redact ``name=value`` pieces of *text* separated by ``&`` or ``;``.

    Pieces before index *first* are left alone (a path segment's name).
    """
    pieces = text.replace(";", "&;").split("&")
    changed = False
    for index, piece in enumerate(pieces):
        if index < first or not piece:
            continue
        lead = ";" if piece[0] == ";" else ""
        name, sep, value = piece[len(lead) :].partition("=")
        if sep and value != REDACTED:
            if urllib.parse.unquote_plus(name).lower() in names:
                pieces[index] = f"{lead}{name}={REDACTED}"
                changed = True
    if not changed:
        return text
    return "&".join(pieces).replace("&;", ";")


def redact_query(
    query: str, names: typing.AbstractSet[str] = DEFAULT_REDACTED_QUERY_PARAMS
) -> str:
    """Return the query string *query* with secret values redacted.

    :param query: a query string without the leading ``?``, e.g.
        ``"page=2&token=abc"``
    :param names: lower-case parameter names to redact, e.g. the result of
        :func:`redacted_query_params`
    :returns: e.g. ``"page=2&token=REDACTED"``; *query* itself when nothing
        was redacted
    """
    if "=" not in query:
        return query
    return _redact_params(query, names, 0)


def _redact_inner_userinfo(text: str) -> str:
    if "@" not in text and "%40" not in text:
        return text
    return _INNER_USERINFO.sub(rf"\1{REDACTED}:{REDACTED}\3", text)


def _redact_path(path: str, names: typing.AbstractSet[str]) -> str:
    path = _redact_inner_userinfo(path)
    if ";" not in path:
        return path
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if ";" in segment:
            segments[index] = _redact_params(segment, names, 1)
    return "/".join(segments)


def _redact_target(target: str, names: typing.AbstractSet[str]) -> str:
    """Path, parameters and query of a URL (no scheme, no authority)."""
    target = target.partition("#")[0]
    path, question, query = target.partition("?")
    path = _redact_path(path, names)
    if question:
        return f"{path}?{_redact_inner_userinfo(redact_query(query, names))}"
    return path


def _redact_authority(authority: str) -> str:
    if "@" in authority:
        return _USERINFO + authority.rpartition("@")[2]
    return authority


def redact_url(
    url: str, names: typing.AbstractSet[str] = DEFAULT_REDACTED_QUERY_PARAMS
) -> str:
    """Return the absolute URL *url* fit for ``url.full`` and for logs.

    :param url: an absolute URL, e.g. ``"https://u:p@host/a?token=t#f"``
    :param names: lower-case parameter names to redact
    :returns: e.g. ``"https://REDACTED:REDACTED@host/a?token=REDACTED"``,
        or :data:`INVALID_URL` when *url* cannot be parsed
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return INVALID_URL
    if not parts.scheme or not parts.netloc:
        return INVALID_URL
    netloc = _redact_authority(parts.netloc)
    query = parts.query
    if query:
        query = _redact_inner_userinfo(redact_query(query, names))
    path = _redact_path(parts.path, names)
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, ""))


def redact_uri(
    uri: str, names: typing.AbstractSet[str] = DEFAULT_REDACTED_QUERY_PARAMS
) -> str:
    """Return the request target *uri* fit for logs and spans.

    A target without ``?``, ``;``, ``#``, ``@`` and ``%40`` (most of them)
    is returned as it is, without being parsed: this runs for every
    request.

    :param uri: the request target as received, e.g. Tornado's
        ``request.uri`` (``"/a?token=t"``) or ``request.path``; an
        absolute-form target (``"http://u:p@host/a"``) keeps its scheme and
        host
    :param names: lower-case parameter names to redact, e.g. the result of
        :func:`redacted_query_params`
    :returns: e.g. ``"/a?token=REDACTED"``; :data:`INVALID_URL` for an
        absolute-form target that cannot be parsed
    """
    if (
        "?" not in uri
        and ";" not in uri
        and "@" not in uri
        and "#" not in uri
        and "%40" not in uri
    ):
        return uri
    if uri.startswith("/"):  # origin-form, the common case
        return _redact_target(uri, names)
    scheme, colon_slashes, rest = uri.partition("://")
    if not colon_slashes:  # authority-form (CONNECT) or something odd
        return _redact_target(_redact_authority(uri), names)
    if not _SCHEME.fullmatch(scheme):
        return INVALID_URL
    authority, slash, target = rest.partition("/")
    host = authority.split("?", 1)[0].split("#", 1)[0]
    if len(host) < len(authority):  # "http://host?q" has no path
        target = authority[len(host) :] + slash + target
        authority, slash = host, ""
    try:
        urllib.parse.urlsplit(f"{scheme}://{authority}/").port  # noqa: B018
    except ValueError:
        return INVALID_URL
    return f"{scheme}://{_redact_authority(authority)}" + _redact_target(
        slash + target, names
    )


def redact_header(
    name: str,
    value: str,
    names: typing.AbstractSet[str] = DEFAULT_REDACTED_QUERY_PARAMS,
) -> str:
    """Return the value of header *name* fit for logs, spans and reports.

    :param name: the header's name, in any case
    :param value: its value
    :param names: lower-case parameter names to redact in a URL header
    :returns: :data:`REDACTED` for a header of :data:`REDACTED_HEADERS`
        (``Authorization``, ``Cookie``, ``X-Api-Key``...); for a header of
        :data:`URL_HEADERS` (``Referer``, ``Location``...) the URL redacted
        by :func:`redact_uri`; else *value* itself
    """
    lower = name.lower()
    if lower in REDACTED_HEADERS:
        return REDACTED
    if lower in URL_HEADERS:
        return redact_uri(value, names)
    return value
