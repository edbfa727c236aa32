"""Prometheus export: :class:`MetricsHandler` and the snapshots it sums.

The application's SDK ``MeterProvider`` aggregates; on each scrape the
handler reads its cumulative state (a *snapshot*: plain, JSON-ready
data), adds the snapshots of sibling processes (:mod:`divak.metrics.peers`)
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

import re
import typing

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

from divak.metrics import peers
from divak.metrics.instruments import MetricsSource
from divak.metrics.snapshot import Snapshot, merge, snapshot

__all__ = ["MetricsHandler", "prometheus_name", "to_families"]

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

    Route it in an application that has metrics (a :class:`divak.Recorder`;
    in any other application it answers an empty exposition):
    ``(r"/metrics", divak.MetricsHandler)``.

    * ``GET`` answers the Prometheus text exposition format (0.0.4), or
      OpenMetrics 1.0 when the ``Accept`` header asks for
      ``application/openmetrics-text`` (as Prometheus does); the encoding
      is ``prometheus_client``'s;
    * histogram buckets carry the trace id and span id of a sampled
      request that fell into them as an OpenMetrics exemplar;
    * when the service runs in several processes (``number_of_procs``),
      the answer is the sum over all of them, whichever process the scrape
      reached (:mod:`divak.metrics.peers`).
    """

    async def get(self) -> None:
        """Write the current metrics; ``Content-Type`` says which format."""
        snapshots: list[Snapshot] = []
        if isinstance(self.application, MetricsSource):
            metrics = self.application.divak_metrics
            snapshots.append(snapshot(metrics))
            snapshots.extend(await peers.gather(metrics))
        encoder, content_type = choose_encoder(self.request.headers.get("Accept", ""))
        body = encoder(_Families(to_families(merge(snapshots))))  # type: ignore[arg-type]
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)
