"""Snapshots: an application's cumulative metrics as plain, JSON-ready data.

A snapshot is what one process hands to its siblings
(:mod:`divak.metrics.peers`) and what :class:`divak.MetricsHandler` sums
before encoding: ``{metric name: {"kind", "description", "unit",
"points"}}``, where ``points`` maps the JSON of the sorted attribute pairs
to a point.  Summing snapshots of several processes is :func:`merge`.

* Each point's attributes include the instrumentation scope it was
  recorded in, as ``otel.scope.name`` and ``otel.scope.version`` (the
  Prometheus exporters of OpenTelemetry label every sample with them),
  unless the application turned them off
  (``settings['metrics_scope_labels']``).
* The entry :data:`RESOURCE` holds the attributes of the metrics'
  resource (``{"kind": "resource", "attributes": {name: text}}``), which
  :class:`divak.MetricsHandler` answers as ``target_info``; a sum keeps
  the attributes every summed process agrees on (several processes are
  not one ``service.instance.id``).
* A histogram bucket's exemplar stays in the snapshots until a newer one
  replaces it (:class:`Exemplars`): the SDK hands an exemplar to one
  collection only, and every scrape, by any number of scrapers, must see
  it.
"""

from __future__ import annotations

import bisect
import json
import threading
import typing

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.trace import format_span_id, format_trace_id

from divak.metrics.thread import paced

__all__ = [
    "RESOURCE",
    "Collectable",
    "Exemplars",
    "Snapshot",
    "from_metrics_data",
    "merge",
    "snapshot",
]

#: A snapshot: ``{metric name: {"kind", "description", "unit", "points"}}``;
#: ``points`` maps the JSON of the sorted attribute pairs to a point.
Snapshot = dict[str, dict[str, typing.Any]]

#: The snapshot's entry of the resource's attributes; not a valid
#: instrument name, so never the name of a metric.
RESOURCE = "@resource"
#: The attributes that name a point's instrumentation scope.
SCOPE_NAME = "otel.scope.name"
SCOPE_VERSION = "otel.scope.version"


class Exemplars:
    """The newest exemplar of every histogram bucket, kept between collections.

    The SDK's exemplar reservoirs are emptied by each collection, so
    without this the first scrape after a sampled request would take its
    exemplar and every later scrape, or a second scraper, would see none.
    Bounded like the points themselves: one exemplar per bucket of each
    point.

    .. attribute:: lock

       Held while a snapshot is taken (:func:`snapshot`): collecting and
       keeping the exemplars is one step, so two threads taking snapshots
       at once never lose an exemplar.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._kept: dict[tuple[str, str], dict[int, list[typing.Any]]] = {}

    def keep(
        self, metric: str, point: str, fresh: list[list[typing.Any]]
    ) -> list[list[typing.Any]]:
        """The exemplars of *point* of *metric*: the *fresh* ones over the kept ones.

        :param metric: the metric's name
        :param point: the point's key in the snapshot
        :param fresh: exemplars the last collection handed out, as
            ``[bucket index, value, trace id, span id, seconds]``
        """
        key = (metric, point)
        kept = self._kept.get(key)
        if kept is None:
            if not fresh:
                return []
            kept = self._kept[key] = {}
        for exemplar in fresh:
            kept[exemplar[0]] = exemplar
        return list(kept.values())


class Collectable(typing.Protocol):
    """What a snapshot is taken of: :class:`~divak.metrics.ApplicationMetrics`."""

    #: The last snapshot, kept when the process shut its metrics down.
    final_snapshot: Snapshot | None
    #: The exemplars kept between collections.
    exemplars: Exemplars
    #: Whether points carry their scope's attributes.
    scope_labels: bool

    def collect(self) -> MetricsData | None:
        """The current cumulative state, or :data:`None` without a reader."""


def snapshot(metrics: Collectable) -> Snapshot:
    """The cumulative state of *metrics*' scrape reader, as plain data."""
    final = metrics.final_snapshot
    if final is not None:
        return final
    exemplars = metrics.exemplars
    with exemplars.lock:
        return from_metrics_data(metrics.collect(), exemplars, metrics.scope_labels)


def from_metrics_data(
    data: MetricsData | None,
    exemplars: Exemplars | None = None,
    scope_labels: bool = True,
) -> Snapshot:
    """Turn the SDK's ``MetricsData`` into a snapshot.

    :param data: what a reader collected, or :data:`None`
    :param exemplars: where the exemplars of earlier collections are kept
        (and this one's are added); :data:`None`: this collection's only
    :param scope_labels: add the scope's name and version to every point
    """
    result: Snapshot = {}
    if data is None:
        return result
    for resource_metrics in data.resource_metrics:
        resource = resource_metrics.resource.attributes
        if resource:
            result[RESOURCE] = {
                "kind": "resource",
                "attributes": {str(k): _label_value(v) for k, v in resource.items()},
            }
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope
            scope_pairs = (
                [(SCOPE_NAME, scope.name), (SCOPE_VERSION, scope.version or "")]
                if scope_labels
                else []
            )
            for metric in scope_metrics.metrics:
                kind = _kind(metric.data)
                if kind is None:
                    continue
                # One entry per name: the same name in another scope adds
                # points (their scope attributes tell them apart).
                entry = result.get(metric.name)
                if entry is None:
                    entry = result[metric.name] = {
                        "kind": kind,
                        "description": metric.description,
                        "unit": metric.unit,
                        "points": {},
                    }
                elif entry["kind"] != kind:
                    continue
                points: dict[str, typing.Any] = entry["points"]
                data_points: typing.Sequence[NumberDataPoint | HistogramDataPoint]
                data_points = metric.data.data_points  # type: ignore[assignment]
                for point in paced(data_points):
                    attributes = sorted(
                        [
                            *(
                                (str(k), _label_value(v))
                                for k, v in (point.attributes or {}).items()
                            ),
                            *scope_pairs,
                        ]
                    )
                    key = json.dumps(attributes)
                    if isinstance(point, HistogramDataPoint):
                        found = _exemplars(point)
                        points[key] = {
                            "attributes": attributes,
                            "bounds": list(point.explicit_bounds),
                            "counts": list(point.bucket_counts),
                            "sum": point.sum,
                            "count": point.count,
                            "exemplars": found
                            if exemplars is None
                            else exemplars.keep(metric.name, key, found),
                        }
                    else:
                        points[key] = {
                            "attributes": attributes,
                            "value": point.value,
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
    bucket boundaries differ from the first one seen is left out.  Of the
    resources' attributes, those all summed snapshots that have a resource
    agree on stay (see :data:`RESOURCE`).  The given snapshots are not
    changed; the sum shares no point with them.
    """
    total: Snapshot = {}
    for each in snapshots:
        for name, metric in each.items():
            if name == RESOURCE:
                _merge_resource(total, metric)
                continue
            into = total.get(name)
            if into is None:
                total[name] = {
                    **metric,
                    "points": {k: _copy(p) for k, p in metric["points"].items()},
                }
                continue
            if into["kind"] != metric["kind"]:
                continue
            for key, point in metric["points"].items():
                have = into["points"].get(key)
                if have is None:
                    into["points"][key] = _copy(point)
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


def _merge_resource(total: Snapshot, resource: dict[str, typing.Any]) -> None:
    into = total.get(RESOURCE)
    if into is None:
        total[RESOURCE] = {**resource, "attributes": dict(resource["attributes"])}
        return
    theirs = resource["attributes"]
    into["attributes"] = {
        k: v for k, v in into["attributes"].items() if theirs.get(k) == v
    }


def _copy(point: dict[str, typing.Any]) -> dict[str, typing.Any]:
    # What merge changes is replaced, never changed in place: the numbers,
    # and the counts and exemplars lists (new lists above).
    return dict(point)
