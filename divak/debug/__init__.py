"""The live debug page: what a service is doing, without Zipkin or Prometheus.

A service under test or in a staging cluster often has nothing next to it
to send its traces and metrics to.  Its debug page shows, per route, the
request rate, the share of failed requests and the latency percentiles
over the last 1, 5 and 15 minutes with a latency chart, the last failed
and slow requests with their trace ids, and the service's state (export
queue, dropped spans, requests in flight, WebSocket connections, uptime,
drain).  Off by default; only loopback clients see it (see :doc:`debug`).

* :class:`~divak.debug.stats.RequestStats` counts the finished requests:
  the request pipeline calls its :meth:`~divak.debug.stats.RequestStats.record`
  once per request, or holds :data:`None` when the page is off;
* :func:`~divak.debug.page.install` serves
  :class:`~divak.debug.page.DebugPageHandler` at a path of an application;
* :class:`~divak.debug.page.DebugSource` names what the page reads of the
  application's state.
"""

from divak.debug.page import (
    DebugPageHandler,
    DebugSource,
    PageOptions,
    client_allowed,
    install,
    page_data,
    page_options,
    page_path,
)
from divak.debug.stats import RequestStats

__all__ = [
    "DebugPageHandler",
    "DebugSource",
    "PageOptions",
    "RequestStats",
    "client_allowed",
    "install",
    "page_data",
    "page_options",
    "page_path",
]
