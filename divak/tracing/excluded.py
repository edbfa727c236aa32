"""Requests left untraced: probes, and the URLs the settings name.

Two mechanisms, both checked where a request's span would start (see
:mod:`divak.tracing.pipeline`):

* **Probes**, by type: a request routed to a handler class deriving from
  :class:`divak.context.Probe` (:class:`~divak.StatusHandler`,
  :class:`~divak.MetricsHandler`, the debug page) is not traced unless
  ``settings['divak_trace_probes']`` is true (:func:`trace_probes`).
* **URLs**, by pattern: the application setting ``divak_excluded_urls`` or
  the variables OpenTelemetry's instrumentations read
  (``OTEL_PYTHON_TORNADO_EXCLUDED_URLS``, then
  ``OTEL_PYTHON_EXCLUDED_URLS``); the matching is theirs
  (``opentelemetry.util.http.ExcludeList``).

An untraced request gets no span of its own (its log records and
outgoing headers carry the upstream trace, if any); it is still counted
in the request metrics and written to the access log.
"""

from __future__ import annotations

import os
import re
import typing

from opentelemetry.util import http as otel_http

from divak.settings import parse_bool

__all__ = ["excluded_url_patterns", "excluded_urls", "trace_probes"]


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


def trace_probes(settings: typing.Mapping[str, typing.Any]) -> bool:
    """Whether requests to :class:`~divak.context.Probe` handlers are traced.

    ``settings['divak_trace_probes']``: :data:`False` by default, so a
    readiness check, a metrics scrape or the debug page makes no span;
    :data:`True` traces them like any other request.  Accepts a
    :class:`bool` or the strings :func:`divak.settings.parse_bool` reads.

    :param settings: the application's settings
    :raises ValueError: for a value that is not a boolean
    """
    return parse_bool(
        settings.get("divak_trace_probes", False), "settings['divak_trace_probes']"
    )
