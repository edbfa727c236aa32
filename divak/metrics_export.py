"""Prometheus export: :class:`MetricsHandler` and the snapshots it sums.

The application's SDK ``MeterProvider`` aggregates; on each scrape the
handler reads its cumulative state (a *snapshot*: plain, JSON-ready
data), adds the snapshots of sibling processes (:mod:`divak.metrics_peers`)
and hands the sum to ``prometheus_client``'s encoders as metric families,
so the Prometheus text format and OpenMetrics are written by
``prometheus_client``.

Why not ``opentelemetry-exporter-prometheus``: its reader translates only
the local process's data and drops the SDK's exemplars.  The names follow
the same OpenTelemetry-to-Prometheus rules: dots become underscores, the
unit ``s`` adds ``_seconds``, counters end in ``_total``, up-down counters
are gauges.
"""

from __future__ import annotations

import bisect
import json
import re
import typing

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    Sum,
)
from opentelemetry.trace import format_span_id, format_trace_id
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from tornado import web

from divak import metrics_peers
from divak.metrics import ApplicationMetrics, application_metrics

__all__ = ["MetricsHandler", "merge", "snapshot", "to_families"]

#: A snapshot: ``{metric name: {"kind", "description", "unit", "points"}}``;
#: ``points`` maps the JSON of the sorted attribute pairs to a point.
Snapshot = dict[str, dict[str, typing.Any]]

_UNITS = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "m": "meters",
    "%": "percent",
}


def snapshot(metrics: ApplicationMetrics) -> Snapshot:
    """The cumulative state of *metrics*' scrape reader, as plain data."""
    final = metrics.final_snapshot
    if final is not None:
        return final
    return from_metrics_data(metrics.collect())


def from_metrics_data(data: MetricsData | None) -> Snapshot:
    """Turn the SDK's ``MetricsData`` into a snapshot."""
    result: Snapshot = {}
    if data is None:
        return result
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points: dict[str, typing.Any] = {}
                kind = _kind(metric.data)
                if kind is None:
                    continue
                for point in metric.data.data_points:
                    attributes = sorted(
                        (str(k), _label_value(v))
                        for k, v in (point.attributes or {}).items()
                    )
                    key = json.dumps(attributes)
                    if isinstance(point, HistogramDataPoint):
                        points[key] = {
                            "attributes": attributes,
                            "bounds": list(point.explicit_bounds),
                            "counts": list(point.bucket_counts),
                            "sum": point.sum,
                            "count": point.count,
                            "exemplars": _exemplars(point),
                        }
                    else:
                        points[key] = {
                            "attributes": attributes,
                            "value": point.value,  # type: ignore[union-attr]
                        }
                result[metric.name] = {
                    "kind": kind,
                    "description": metric.description,
                    "unit": metric.unit,
                    "points": points,
                }
    return result


def _kind(data: typing.Any) -> str | None:
    if isinstance(data, Histogram):
        return "histogram"
    if isinstance(data, Sum):
        return "counter" if data.is_monotonic else "gauge"
    if isinstance(data, Gauge):
        return "gauge"
    return None


def _exemplars(point: HistogramDataPoint) -> list[list[typing.Any]]:
    # One per bucket: [bucket index, value, trace id, span id, seconds].
    found: dict[int, list[typing.Any]] = {}
    for exemplar in point.exemplars or ():
        if not exemplar.trace_id:
            continue
        index = bisect.bisect_left(point.explicit_bounds, exemplar.value)
        found[index] = [
            index,
            exemplar.value,
            format_trace_id(exemplar.trace_id),
            format_span_id(exemplar.span_id or 0),
            exemplar.time_unix_nano / 1e9,
        ]
    return list(found.values())


def _label_value(value: typing.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)


def merge(snapshots: typing.Iterable[Snapshot]) -> Snapshot:
    """Sum *snapshots* (of sibling processes) point by point.

    Counters, gauges, histogram buckets, sums and counts add up; of two
    exemplars for one bucket the later one stays.  A histogram point whose
    bucket boundaries differ from the first one seen is left out.
    """
    total: Snapshot = {}
    for each in snapshots:
        for name, metric in each.items():
            into = total.get(name)
            if into is None:
                total[name] = json.loads(json.dumps(metric))  # a deep copy
                continue
            if into["kind"] != metric["kind"]:
                continue
            for key, point in metric["points"].items():
                have = into["points"].get(key)
                if have is None:
                    into["points"][key] = json.loads(json.dumps(point))
                elif "value" in point:
                    have["value"] += point["value"]
                elif have["bounds"] == point["bounds"]:
                    have["counts"] = [
                        a + b
                        for a, b in zip(have["counts"], point["counts"], strict=True)
                    ]
                    have["sum"] += point["sum"]
                    have["count"] += point["count"]
                    latest = {e[0]: e for e in have["exemplars"]}
                    for exemplar in point["exemplars"]:
                        if (
                            exemplar[0] not in latest
                            or exemplar[4] > latest[exemplar[0]][4]
                        ):
                            latest[exemplar[0]] = exemplar
                    have["exemplars"] = list(latest.values())
    return total


def prometheus_name(name: str, unit: str) -> tuple[str, str]:
    """The Prometheus metric name and unit of an OpenTelemetry instrument.

    ``("http.server.request.duration", "s")`` gives
    ``("http_server_request_duration_seconds", "seconds")``; annotations
    in braces (``{request}``) and ``1`` add no unit.
    """
    base = re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_:]", "_", name)).strip("_")
    if base[:1].isdigit():
        base = "_" + base
    unit = re.sub(r"\{[^}]*\}", "", unit)
    unit = _UNITS.get(unit, re.sub(r"[^a-zA-Z0-9_]", "_", unit).strip("_"))
    if unit == "1":
        unit = ""
    if unit and not base.endswith("_" + unit):
        base = f"{base}_{unit}"
    return base, unit


def _label_name(key: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return "_" + name if name[:1].isdigit() else name


def to_families(total: Snapshot) -> list[Metric]:
    """``prometheus_client`` metric families for a (merged) snapshot."""
    families: list[Metric] = []
    for name in sorted(total):
        metric = total[name]
        full_name, unit = prometheus_name(name, metric["unit"])
        points = list(metric["points"].values())
        keys = sorted({k for p in points for k, _ in p["attributes"]})
        labels = [_label_name(k) for k in keys]
        kind = metric["kind"]
        family: Metric
        if kind == "counter":
            if full_name.endswith("_total"):
                full_name = full_name[: -len("_total")]
            family = CounterMetricFamily(
                full_name, metric["description"], labels=labels, unit=unit
            )
        elif kind == "gauge":
            family = GaugeMetricFamily(
                full_name, metric["description"], labels=labels, unit=unit
            )
        else:
            family = HistogramMetricFamily(
                full_name, metric["description"], labels=labels, unit=unit
            )
        for point in points:
            given = dict(point["attributes"])
            values = [given.get(k, "") for k in keys]
            if kind == "histogram":
                family.add_metric(values, _buckets(point), point["sum"])  # type: ignore[attr-defined,arg-type,call-arg]
            else:
                family.add_metric(values, point["value"])  # type: ignore[attr-defined,arg-type,call-arg]
        families.append(family)
    return families


def _buckets(point: dict[str, typing.Any]) -> list[tuple[typing.Any, ...]]:
    exemplars = {e[0]: e for e in point["exemplars"]}
    buckets: list[tuple[typing.Any, ...]] = []
    cumulative = 0
    bounds = [*map(floatToGoString, point["bounds"]), "+Inf"]
    for index, (bound, count) in enumerate(zip(bounds, point["counts"], strict=True)):
        cumulative += count
        exemplar = exemplars.get(index)
        if exemplar is None:
            buckets.append((bound, cumulative))
        else:
            buckets.append(
                (
                    bound,
                    cumulative,
                    Exemplar(
                        {"trace_id": exemplar[2], "span_id": exemplar[3]},
                        exemplar[1],
                        exemplar[4],
                    ),
                )
            )
    return buckets


class _Families:
    """What ``prometheus_client``'s encoders read: an object with ``collect``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class MetricsHandler(web.RequestHandler):
    """Answer Prometheus scrapes with the application's metrics.

    Route it in an application that has metrics (a :class:`divak.Recorder`,
    or any :class:`tornado.web.Application`):
    ``(r"/metrics", divak.MetricsHandler)``.

    * ``GET`` answers the Prometheus text exposition format (0.0.4), or
      OpenMetrics 1.0 when the ``Accept`` header asks for
      ``application/openmetrics-text`` (as Prometheus does); the encoding
      is ``prometheus_client``'s;
    * histogram buckets carry the trace id and span id of a sampled
      request that fell into them as an OpenMetrics exemplar;
    * when the service runs in several processes (``number_of_procs``),
      the answer is the sum over all of them, whichever process the scrape
      reached (:mod:`divak.metrics_peers`).
    """

    async def get(self) -> None:
        """Write the current metrics; ``Content-Type`` says which format."""
        metrics = application_metrics(self.application)
        snapshots = [snapshot(metrics)]
        snapshots.extend(await metrics_peers.gather(metrics))
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        body = encoder(_Families(to_families(merge(snapshots))))  # type: ignore[arg-type]
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)
