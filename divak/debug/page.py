"""The debug page: per-route statistics and the service's state, served live.

:func:`install` adds :class:`DebugPageHandler` at a path of an application;
the handler renders the :class:`~divak.debug.stats.RequestStats` the
application's request pipeline feeds and the state of the service (a
:class:`DebugSource`) as one HTML page with no external assets (inline CSS,
an inline SVG latency chart per route) that reloads itself every
:data:`REFRESH_SECONDS` seconds, or as JSON (``?format=json``, the same
data).  Everything taken from requests is escaped (Tornado's template
autoescaping), and the page forbids scripts altogether with a
``Content-Security-Policy`` header.

.. rubric:: Who may see it

Only clients on the loopback interface, unless the allow-list adds
networks.  Both the address of the connection's peer and the client
address Tornado reports (``request.remote_ip``, which ``xheaders`` takes
from ``X-Real-Ip``/``X-Forwarded-For``) must be allowed, so a forged
header never opens the page to a remote client, and a proxy on the same
host forwarding with ``xheaders`` on does not either.  Everyone else is
answered 404, as if the page did not exist.

.. rubric:: settings['divak_debug_page']

The page's path (``"/divak"``), also ``DIVAK_DEBUG_PAGE``; read by
:func:`page_path`.  No page when neither is set (the default), or when the
value is a false word (``0``, ``off``, ``false``, ``no``).

.. rubric:: settings['divak_debug_page_allow']

Addresses or networks (``"10.0.0.0/8"``, ``"192.0.2.7"``) allowed to see
the page besides the loopback ones: a list, or one string separated by
commas; also ``DIVAK_DEBUG_PAGE_ALLOW``.

.. rubric:: settings['divak_debug_page_slow']

Seconds from which a request is listed as slow; default 1.  Also
``DIVAK_DEBUG_PAGE_SLOW``.

.. rubric:: settings['divak_trace_url']

A URL template with ``{trace_id}``, e.g.
``"http://zipkin:9411/zipkin/traces/{trace_id}"``: each trace id on the
page links to it.  Also ``DIVAK_TRACE_URL``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import socket
import typing

from tornado import http1connection, httputil, template, web

from divak.context import Probe, request_context_of
from divak.debug.stats import WINDOWS, RequestStats
from divak.settings import number_setting, parse_bool, setting

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "REFRESH_SECONDS",
    "DebugPageHandler",
    "DebugSource",
    "PageOptions",
    "client_allowed",
    "install",
    "page_data",
    "page_options",
    "page_path",
    "render",
    "slow_threshold",
]

#: Seconds between two reloads of the HTML page.
REFRESH_SECONDS = 5
#: The page's ``Content-Security-Policy``: inline styles, no script, no
#: external resource.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TRACE_ID = "{trace_id}"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DebugSource(typing.Protocol):
    """The state of the service the debug page shows, read on each view.

    The application (or an object of the lifecycle that knows it)
    provides these read-only properties; the page calls each once per view,
    on the IOLoop's thread.
    """

    @property
    def divak_queued_spans(self) -> int:
        """Finished spans waiting in the export queues, all reporters together."""

    @property
    def divak_dropped_spans(self) -> int:
        """Spans that never reached a collector (queue full, or export failed)."""

    @property
    def divak_requests_in_flight(self) -> int:
        """HTTP requests received and not answered yet."""

    @property
    def divak_websocket_connections(self) -> int:
        """WebSocket connections open now."""

    @property
    def divak_uptime(self) -> float:
        """Seconds since the application started serving."""

    @property
    def draining(self) -> bool:
        """:data:`True` once the service stopped taking new work to shut down."""


@dataclasses.dataclass(frozen=True)
class PageOptions:
    """The page's settings, read once by :func:`page_options`.

    :param allow: networks allowed besides the loopback ones
    :param trace_url: the trace link template (with ``{trace_id}``), or
        :data:`None`
    :param refresh: seconds between reloads of the HTML page
    """

    allow: tuple[Network, ...] = ()
    trace_url: str | None = None
    refresh: int = REFRESH_SECONDS


def page_path(
    settings: typing.Mapping[str, typing.Any], path: str | None = None
) -> str | None:
    """The debug page's path: *path*, else ``settings['divak_debug_page']``,
    else ``DIVAK_DEBUG_PAGE``.

    :param settings: the application settings
    :param path: the path given in code, which wins
    :returns: the path, or :data:`None` for no page (nothing set, or a
        false word such as ``off``)
    :raises ValueError: naming the setting, for a value that is not a path
        starting with ``/``
    """
    if path is None:
        value, source = setting(settings, "divak_debug_page", "DIVAK_DEBUG_PAGE", None)
    else:
        value, source = path, "the debug page's path"
    if value is None or value is False:
        return None
    text = str(value).strip()
    try:
        if not parse_bool(text):
            return None
    except ValueError:
        pass
    if not text.startswith("/"):
        raise ValueError(f"{source} must be a path starting with '/', not {value!r}")
    return text


def page_options(settings: typing.Mapping[str, typing.Any]) -> PageOptions:
    """Read the allow-list and the trace link template (see the module).

    :raises ValueError: naming the setting, for an address or network that
        does not parse, or a template without ``{trace_id}``
    """
    value, source = setting(
        settings, "divak_debug_page_allow", "DIVAK_DEBUG_PAGE_ALLOW", ()
    )
    items = value.split(",") if isinstance(value, str) else list(value)
    allow = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            allow.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"{source} must list addresses or networks, not {item!r}"
            ) from None
    trace_url, source = setting(settings, "divak_trace_url", "DIVAK_TRACE_URL", None)
    if trace_url is not None:
        trace_url = str(trace_url).strip() or None
    if trace_url is not None and _TRACE_ID not in trace_url:
        raise ValueError(f"{source} must contain {_TRACE_ID}, not {trace_url!r}")
    return PageOptions(tuple(allow), trace_url)


def slow_threshold(settings: typing.Mapping[str, typing.Any]) -> float:
    """``settings['divak_debug_page_slow']`` or ``DIVAK_DEBUG_PAGE_SLOW``, seconds.

    :raises ValueError: naming the setting, for a value that is not a
        positive number
    """
    key, variable = "divak_debug_page_slow", "DIVAK_DEBUG_PAGE_SLOW"
    slow = number_setting(settings, key, variable, 1.0, float)
    if not slow > 0:
        source = setting(settings, key, variable, None)[1]
        raise ValueError(f"{source} must be a positive number, not {slow}")
    return slow


def install(
    application: web.Application,
    path: str,
    stats: RequestStats | None = None,
    source: DebugSource | None = None,
) -> RequestStats:
    """Serve the debug page at *path* of *application*.

    The route is added for every host, before the routes given to the
    application's constructor, so a catch-all route does not hide it.
    The settings are read now (see the module).

    :param application: the application that serves the page
    :param path: the page's path, e.g. ``"/divak"`` (exactly; no pattern)
    :param stats: the statistics to show; default new ones with the slow
        threshold of ``settings['divak_debug_page_slow']``
    :param source: the service's state; :data:`None` shows none
    :returns: the statistics, which the request pipeline must feed
        (:meth:`RequestStats.record`)
    :raises ValueError: for a path that does not start with ``/`` or an
        invalid setting
    """
    if not path.startswith("/"):
        raise ValueError(f"the debug page's path must start with '/', not {path!r}")
    settings = application.settings
    options = page_options(settings)
    if stats is None:
        stats = RequestStats(slow=slow_threshold(settings))
    application.add_handlers(
        r".*",
        [
            web.url(
                re.escape(path),
                DebugPageHandler,
                {"stats": stats, "source": source, "options": options},
            )
        ],
    )
    return stats


def _peer(request: httputil.HTTPServerRequest) -> Address | bool:
    """The connection's peer address; :data:`True` for a Unix socket (local),
    :data:`False` when unknown."""
    connection = request.connection
    if not isinstance(connection, http1connection.HTTP1Connection):
        return False
    sock = connection.stream.socket
    if sock is None:
        return False
    if sock.family == socket.AF_UNIX:
        return True
    try:
        return ipaddress.ip_address(sock.getpeername()[0])
    except (OSError, ValueError, IndexError):
        return False


def _allowed(address: Address, allow: tuple[Network, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in network for network in allow)


def client_allowed(
    request: httputil.HTTPServerRequest, allow: tuple[Network, ...] = ()
) -> bool:
    """Whether *request* may see the debug page.

    Both the connection's peer (a Unix socket counts as local) and
    ``request.remote_ip`` must be loopback addresses or in *allow*.

    :param request: the request
    :param allow: networks allowed besides the loopback ones
    """
    peer = _peer(request)
    if peer is False:
        return False
    if peer is not True and not _allowed(typing.cast(Address, peer), allow):
        return False
    remote = request.remote_ip or ""
    if peer is True and remote == "0.0.0.0":  # Tornado's address of a Unix socket
        return True
    try:
        return _allowed(ipaddress.ip_address(remote), allow)
    except ValueError:
        return False


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def page_data(
    stats: RequestStats,
    source: DebugSource | None = None,
    options: PageOptions | None = None,
    service_name: str | None = None,
) -> dict[str, typing.Any]:
    """What the page shows, JSON-ready (``?format=json`` writes it as is).

    :returns: :meth:`RequestStats.snapshot`'s dictionary, the times of
        failed and slow requests as ISO 8601 UTC strings and each with
        ``trace_url`` (:data:`None` without a template or a trace id),
        plus ``generated_at`` (ISO 8601 UTC), ``service_name``,
        ``windows`` (name to seconds) and ``service``: ``uptime``
        (seconds), ``draining``, ``requests_in_flight``,
        ``websocket_connections``, ``queued_spans``, ``dropped_spans``, or
        :data:`None` when the application reports no state
    """
    options = options or PageOptions()
    data = stats.snapshot()
    template_url = options.trace_url
    for entry in data["errors"] + data["slow"]:
        entry["time"] = _iso(entry["time"])
        trace_id = entry["trace_id"]
        entry["trace_url"] = (
            template_url.replace(_TRACE_ID, trace_id)
            if template_url is not None and trace_id
            else None
        )
    service = None
    if source is not None:
        service = {
            "uptime": float(source.divak_uptime),
            "draining": bool(source.draining),
            "requests_in_flight": int(source.divak_requests_in_flight),
            "websocket_connections": int(source.divak_websocket_connections),
            "queued_spans": int(source.divak_queued_spans),
            "dropped_spans": int(source.divak_dropped_spans),
        }
    return {
        "generated_at": _iso(datetime.datetime.now(datetime.UTC).timestamp()),
        "service_name": service_name,
        "windows": dict(WINDOWS),
        "service": service,
        **data,
    }


class DebugPageHandler(Probe, web.RequestHandler):
    """Serve the debug page (HTML, or JSON with ``?format=json``).

    Routed by :func:`install`, which passes its keyword arguments.  Answers
    404 to clients :func:`client_allowed` refuses, whatever the method.
    Its successful responses are logged at DEBUG
    (``access_log_failures_only``): the page reloads itself.
    """

    access_log_failures_only = True

    def initialize(
        self,
        stats: RequestStats,
        source: DebugSource | None = None,
        options: PageOptions | None = None,
    ) -> None:
        """:param stats: what the page shows of the requests
        :param source: the service's state, or :data:`None`
        :param options: the page's settings (:func:`page_options`)
        """
        self.stats = stats
        self.source = source
        self.debug_options = options or PageOptions()

    def prepare(self) -> None:
        """Answer 404 unless the client may see the page.

        :raises tornado.web.HTTPError: 404
        """
        if not client_allowed(self.request, self.debug_options.allow):
            raise web.HTTPError(404)

    def get(self) -> None:
        """Write the page; JSON when the query says ``format=json``."""
        # A traced application's name is its spans' (the request's context
        # carries it); another one's is its setting.
        request_context = request_context_of(self.request)
        service_name = (
            request_context.service_name
            if request_context is not None
            else self.application.settings.get("service")
        )
        data = page_data(
            self.stats,
            self.source,
            self.debug_options,
            str(service_name) if service_name else None,
        )
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.get_query_argument("format", "html") == "json":
            self.write(data)
            return
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write(render(data, self.debug_options.refresh))


# -- the HTML --------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        milliseconds = seconds * 1e3
        if milliseconds < 100:
            return f"{milliseconds:.1f} ms"
        return f"{milliseconds:.0f} ms"
    return f"{seconds:.2f} s"


def _rate(value: float) -> str:
    if value == 0:
        return "0"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _share(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f} %" if value else "0 %"


def _uptime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _clock(iso: str) -> str:
    return iso[11:19]


_CHART_WIDTH = 270
_CHART_HEIGHT = 58
_CHART_MARGIN = 4


class _Chart:
    """An SVG latency chart's geometry: numbers only."""

    def __init__(self, chart: dict[str, typing.Any]) -> None:
        p99 = chart["p99"]
        self.top = max((value for value in p99 if value is not None), default=0.0)
        self.p50 = self._path(chart["p50"])
        self.p99 = self._path(p99)

    def _path(self, values: list[float | None]) -> str:
        step = _CHART_WIDTH / max(len(values) - 1, 1)
        height = _CHART_HEIGHT - 2 * _CHART_MARGIN
        parts = []
        drawing = False
        for index, value in enumerate(values):
            if value is None:
                drawing = False
                continue
            x = index * step
            y = _CHART_MARGIN + height * (1 - value / self.top if self.top else 1)
            # "h0" draws a dot (round caps) where a point stands alone.
            parts.append(f"L{x:.1f} {y:.1f}" if drawing else f"M{x:.1f} {y:.1f}h0")
            drawing = True
        return " ".join(parts)


_TEMPLATE = template.Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{{ refresh }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
{% set heading = "divak debug page" %}
{% if data["service_name"] %}
{% set heading = heading + " · " + data["service_name"] %}
{% end %}
<title>{{ heading }}</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:16px 20px;color:#1d2329}
h1{font-size:18px;margin:0 0 2px}
h2{font-size:15px;margin:22px 0 6px}
.muted{color:#6a737d}
.bad{color:#b3261e;font-weight:600}
dl.state{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
dl.state div{border:1px solid #d8dee4;border-radius:6px;padding:6px 12px}
dl.state dt{font-size:11px;color:#6a737d;text-transform:uppercase}
dl.state dd{margin:0;font-size:16px;font-weight:600}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #eaeef2;text-align:right}
th,td{white-space:nowrap}
th{font-size:11px;color:#57606a;font-weight:600}
th.group{text-align:center;border-bottom:1px solid #d8dee4}
td.name,th.name,td.text{text-align:left}
td.name{font-family:ui-monospace,Menlo,monospace;font-size:12px}
tbody.route td{border-bottom:none;padding-top:1px;padding-bottom:1px}
tbody.route{border-top:1px solid #d8dee4}
tbody.route td[rowspan]{vertical-align:top;padding-top:6px}
.sep{border-left:1px solid #eaeef2}
svg{display:block}
svg path{fill:none;stroke-width:1.6;stroke-linecap:round;stroke-linejoin:round}
svg .p99{stroke:#f0a35e}
svg .p50{stroke:#2f6fbe}
svg .axis{stroke:#d8dee4;stroke-width:1}
svg text{font-size:9px;fill:#6a737d}
.key{display:inline-block;width:14px;height:3px;margin:0 3px 2px 10px}
a{color:#0b5cad}
</style>
</head>
<body>
<h1>{{ heading }}</h1>
<div class="muted">Generated {{ data["generated_at"] }}
· reloads every {{ refresh }} s · <a href="?format=json">JSON</a></div>
{% set service = data["service"] %}
{% if service is None %}
<p class="muted">This application reports no service state.</p>
{% else %}
<dl class="state">
<div><dt>Uptime</dt><dd>{{ uptime(service["uptime"]) }}</dd></div>
<div><dt>State</dt>
{% if service["draining"] %}<dd class="bad">draining</dd>
{% else %}<dd>serving</dd>{% end %}</div>
<div><dt>Requests in flight</dt>
<dd>{{ service["requests_in_flight"] }}</dd></div>
<div><dt>WebSockets open</dt>
<dd>{{ service["websocket_connections"] }}</dd></div>
<div><dt>Spans queued</dt><dd>{{ service["queued_spans"] }}</dd></div>
<div><dt>Spans dropped</dt>
<dd{% if service["dropped_spans"] %} class="bad"{% end %}>
{{ service["dropped_spans"] }}</dd></div>
</dl>
{% end %}
<h2>Routes</h2>
{% if not data["routes"] %}
<p class="muted">No request in the last 15 minutes.</p>
{% else %}
<table>
<thead><tr><th class="name">Route</th><th class="name">Last</th>
<th>req/s</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th>
<th class="name sep">Latency per 10 s, last 15 min:
<span class="key" style="background:#2f6fbe"></span>p50
<span class="key" style="background:#f0a35e"></span>p99</th></tr></thead>
{% for row in data["routes"] %}
<tbody class="route">
{% for name, seconds in windows %}
{% set window = row["windows"][name] %}
<tr>
{% if name == windows[0][0] %}
<td class="name" rowspan="{{ len(windows) }}">{{ row["name"] }}
{% if row["route"] is None %}<br><span class="muted">no route</span>{% end %}</td>
{% end %}
<td class="text muted">{{ name[:-1] }} min</td>
<td>{{ rate(window["rate"]) }}</td>
<td{% if window["errors"] %} class="bad"{% end %}>
{{ share(window["error_rate"]) }}</td>
<td>{{ duration(window["p50"]) }}</td>
<td>{{ duration(window["p90"]) }}</td>
<td>{{ duration(window["p99"]) }}</td>
{% if name == windows[0][0] %}
{% set geometry = chart(row["chart"]) %}
<td class="sep" rowspan="{{ len(windows) }}">
<svg width="{{ chart_width }}" height="{{ chart_height }}"
 viewBox="0 0 {{ chart_width }} {{ chart_height }}" role="img">
<title>{{ row["name"] }}: p50 and p99 latency per 10 s, last 15 minutes</title>
<path class="axis" d="M0 {{ chart_height - 0.5 }}H{{ chart_width }}"/>
<path class="p99" d="{{ geometry.p99 }}"/>
<path class="p50" d="{{ geometry.p50 }}"/>
<text x="2" y="9">{{ duration(geometry.top) }}</text></svg></td>
{% end %}
</tr>
{% end %}
</tbody>
{% end %}
</table>
{% end %}
{% for title, key in (("Recent errors", "errors"), ("Recent slow requests", "slow")) %}
<h2>{{ title }}
{% if key == "slow" and data["slow_threshold"] is not None %}
<span class="muted">(at least {{ duration(data["slow_threshold"]) }})</span>
{% end %}</h2>
{% if not data[key] %}
<p class="muted">None.</p>
{% else %}
<table>
<thead><tr><th class="name">Time (UTC)</th><th class="name">Route</th>
<th class="name">Path</th><th>Status</th><th>Duration</th>
<th class="name">Trace</th></tr></thead>
<tbody>
{% for entry in data[key] %}
<tr><td class="text">{{ clock(entry["time"]) }}</td>
<td class="name">{{ entry["name"] }}</td>
<td class="name">{{ entry["path"] or "" }}</td>
<td{% if entry["error"] %} class="bad"{% end %}>
{% if entry["status"] is None %}no response{% else %}{{ entry["status"] }}{% end %}
</td>
<td>{{ duration(entry["duration"]) }}</td>
<td class="name">
{% if entry["trace_url"] %}
<a href="{{ entry["trace_url"] }}">{{ entry["trace_id"] }}</a>
{% else %}{{ entry["trace_id"] or "–" }}{% end %}
</td></tr>
{% end %}
</tbody>
</table>
{% end %}
{% end %}
</body>
</html>
""",
    name="divak-debug-page.html",
    whitespace="single",
)


def render(data: dict[str, typing.Any], refresh: int = REFRESH_SECONDS) -> bytes:
    """The HTML page of :func:`page_data`'s *data*; every value is escaped.

    :param data: what :func:`page_data` returned
    :param refresh: seconds between reloads
    """
    return _TEMPLATE.generate(
        data=data,
        refresh=refresh,
        windows=WINDOWS,
        duration=_duration,
        rate=_rate,
        share=_share,
        uptime=_uptime,
        clock=_clock,
        chart=_Chart,
        chart_width=_CHART_WIDTH,
        chart_height=_CHART_HEIGHT,
    )
