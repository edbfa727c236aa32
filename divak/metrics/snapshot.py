"""Snapshots: an application's cumulative metrics as plain, JSON-ready data.

A snapshot is what one process hands to its siblings
(:mod:`divak.metrics.peers`) and what :class:`divak.MetricsHandler` sums
before encoding: ``{metric name: {"kind", "description", "unit",
"points"}}``, where ``points`` maps the JSON of the sorted attribute pairs
to a point.  Summing snapshots of several processes is :func:`merge`.
"""

from __future__ import annotations

import bisect
import json
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

__all__ = ["Collectable", "Snapshot", "from_metrics_data", "merge", "snapshot"]

#: A snapshot: ``{metric name: {"kind", "description", "unit", "points"}}``;
#: ``points`` maps the JSON of the sorted attribute pairs to a point.
Snapshot = dict[str, dict[str, typing.Any]]


class Collectable(typing.Protocol):
    """What a snapshot is taken of: :class:`~divak.metrics.ApplicationMetrics`."""

    #: The last snapshot, kept when the process shut its metrics down.
    final_snapshot: Snapshot | None

    def collect(self) -> MetricsData | None:
        """The current cumulative state, or :data:`None` without a reader."""


def snapshot(metrics: Collectable) -> Snapshot:
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
                data_points: typing.Sequence[NumberDataPoint | HistogramDataPoint]
                data_points = metric.data.data_points  # type: ignore[assignment]
                for point in paced(data_points):
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
                            "value": point.value,
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
    bucket boundaries differ from the first one seen is left out.  The
    given snapshots are not changed; the sum shares no point with them.
    """
    total: Snapshot = {}
    for each in snapshots:
        for name, metric in each.items():
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


def _copy(point: dict[str, typing.Any]) -> dict[str, typing.Any]:
    # What merge changes is replaced, never changed in place: the numbers,
    # and the counts and exemplars lists (new lists above).
    return dict(point)
