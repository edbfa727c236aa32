"""Request URLs left untraced: health checks and scrapes.

The patterns come from the application setting ``divak_excluded_urls`` or
the variables OpenTelemetry's instrumentations read
(``OTEL_PYTHON_TORNADO_EXCLUDED_URLS``, then ``OTEL_PYTHON_EXCLUDED_URLS``);
the matching is theirs (``opentelemetry.util.http.ExcludeList``).
"""

from __future__ import annotations

import os
import re
import typing

from opentelemetry.util import http as otel_http

__all__ = ["excluded_url_patterns", "excluded_urls"]


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def _patterns(value: typing.Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(item).strip() for item in value or () if str(item).strip()]


def excluded_url_patterns(settings: typing.Mapping[str, typing.Any]) -> list[str]:
    """The patterns of :func:`excluded_urls`: the setting, else the variables.

    :param settings: the application's settings
    :returns: the regular expressions, empty when nothing is excluded
    """
    configured = settings.get("divak_excluded_urls")
    if configured is not None:
        return _patterns(configured)
    return _patterns(
        _get("OTEL_PYTHON_TORNADO_EXCLUDED_URLS") or _get("OTEL_PYTHON_EXCLUDED_URLS")
    )


def excluded_urls(
    settings: typing.Mapping[str, typing.Any],
) -> typing.Callable[[str], bool]:
    """A test for the request URLs that must not be traced.

    The patterns come from the application setting ``divak_excluded_urls``
    (a list of regular expressions, or one comma-separated string) when it
    is set, else from ``OTEL_PYTHON_TORNADO_EXCLUDED_URLS``, else from
    ``OTEL_PYTHON_EXCLUDED_URLS``.  As in OpenTelemetry's instrumentations
    (``opentelemetry.util.http.ExcludeList``, which does the matching), a
    URL is excluded when any pattern is *found* in it (:func:`re.search`),
    so ``/status`` also excludes ``/status/ready``; anchor it
    (``^/status$``) to exclude one path only.  Call the result with the
    request's ``uri`` (path and query), as OpenTelemetry's Tornado
    instrumentation does.

    :param settings: the application's settings
    :returns: ``function(uri) -> bool``, :data:`True` for a URL to leave
        untraced
    :raises re.error: when a pattern is not a valid regular expression
    """
    patterns = excluded_url_patterns(settings)
    for pattern in patterns:
        re.compile(pattern)  # a bad pattern fails at start-up, by name
    return otel_http.ExcludeList(patterns).url_disabled
