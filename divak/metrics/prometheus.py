"""Prometheus export: :class:`MetricsHandler` and the snapshots it sums.

The application's SDK ``MeterProvider`` aggregates; on each scrape the
handler reads its cumulative state (a *snapshot*: plain, JSON-ready
data), adds the snapshots of sibling processes (:mod:`divak.metrics.peers`)
and hands the sum to ``prometheus_client``'s encoders as metric families,
so the Prometheus text format and OpenMetrics are written by
``prometheus_client``.

Why not ``opentelemetry-exporter-prometheus``: its reader translates only
the local process's data and drops the SDK's exemplars.  The answer
follows the same OpenTelemetry-to-Prometheus rules (the specification's
"Prometheus and OpenMetrics Compatibility"): dots become underscores, the
unit ``s`` adds ``_seconds``, counters end in ``_total``, up-down counters
are gauges; every sample carries the ``otel_scope_name`` and
``otel_scope_version`` labels of the instrumentation scope it was recorded
in, and the resource's attributes are the labels of one ``target_info``
metric (an OpenMetrics info metric; a gauge of value 1 in the text format).
"""

from __future__ import annotations

import re
import typing

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString
from tornado import web

from divak.context import Probe
from divak.metrics import peers
from divak.metrics.instruments import ApplicationMetrics, MetricsSource
from divak.metrics.snapshot import RESOURCE, Snapshot, merge
from divak.metrics.thread import paced

#: The ``Content-Type`` of the Prometheus text exposition format 0.0.4, what
#: ``generate_latest`` writes (named here: older prometheus_client releases
#: have no constant for it).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

__all__ = [
    "MetricsHandler",
    "choose_format",
    "exposition",
    "prometheus_name",
    "to_families",
]

#: An encoder of ``prometheus_client``: metric families to the answer's body.
Encoder = typing.Callable[[typing.Any], bytes]

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
    """``prometheus_client`` metric families for a (merged) snapshot.

    Each sample carries the labels of its own attributes only (an absent
    label and an empty one are the same series for Prometheus), so the
    answer grows with the number of series, not with series times the
    attribute names of the whole family.
    """
    families: list[Metric] = []
    label_names: dict[str, str] = {}
    bucket_names: dict[tuple[float, ...], list[str]] = {}
    resource = total.get(RESOURCE)
    if resource is not None and resource["attributes"]:
        target = Metric("target", "Target metadata", "info")
        target.add_sample(
            "target_info",
            {_label_name(k): v for k, v in sorted(resource["attributes"].items())},
            1.0,
        )
        families.append(target)
    for name in sorted(total):
        if name == RESOURCE:
            continue
        metric = total[name]
        full_name, unit = prometheus_name(name, metric["unit"])
        kind = metric["kind"]
        if kind == "counter":
            full_name = full_name.removesuffix("_total")
        family = Metric(full_name, metric["description"], kind, unit)
        full_name = family.name  # with the unit
        samples = family.samples = _PacedSamples()
        for point in paced(metric["points"].values()):
            labels = {}
            for key, value in point["attributes"]:
                label = label_names.get(key)
                if label is None:
                    label = label_names[key] = _label_name(key)
                labels[label] = value
            if kind == "histogram":
                bounds = tuple(point["bounds"])
                les = bucket_names.get(bounds)
                if les is None:
                    les = bucket_names[bounds] = [*map(floatToGoString, bounds), "+Inf"]
                _add_histogram(samples, full_name, labels, les, point)
            elif kind == "counter":
                samples.append(Sample(full_name + "_total", labels, point["value"]))
            else:
                samples.append(Sample(full_name, labels, point["value"]))
        families.append(family)
    return families


def _add_histogram(
    samples: list[Sample],
    name: str,
    labels: dict[str, str],
    les: list[str],
    point: dict[str, typing.Any],
) -> None:
    exemplars = {e[0]: e for e in point["exemplars"]}
    cumulative = 0
    bucket = name + "_bucket"
    for index, (le, count) in enumerate(zip(les, point["counts"], strict=True)):
        cumulative += count
        exemplar = exemplars.get(index)
        samples.append(
            Sample(
                bucket,
                {**labels, "le": le},
                cumulative,
                None,
                None
                if exemplar is None
                else Exemplar(
                    {"trace_id": exemplar[2], "span_id": exemplar[3]},
                    exemplar[1],
                    exemplar[4],
                ),
            )
        )
    samples.append(Sample(name + "_count", labels, cumulative))
    samples.append(Sample(name + "_sum", labels, point["sum"]))


_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")


def choose_format(accept: str) -> tuple[Encoder, str]:
    """The encoder and ``Content-Type`` for a scrape's ``Accept`` header.

    ``prometheus_client``'s choice (OpenMetrics when asked for, else the
    text format 0.0.4), after leaving out each media range whose
    ``version`` parameter is not dotted numbers (parameter values may be
    quoted, RFC 9110; an empty one is no version); whatever the header
    holds, the answer is at worst the text format 0.0.4, never an error.

    :param accept: the ``Accept`` header, ``""`` when absent
    """
    ranges = []
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        cleaned = [media_type.strip()]
        valid = True
        for parameter in parameters:
            key, _, value = parameter.strip().partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "version" and value and not _VERSION.fullmatch(value):
                valid = False
            if value:
                cleaned.append(f"{key}={value}")
        if valid:
            ranges.append(";".join(cleaned))
    try:
        return choose_encoder(",".join(ranges))
    except Exception:  # noqa: BLE001 - whatever else it trips on: the text format
        return generate_latest, TEXT_FORMAT


def exposition(
    metrics: ApplicationMetrics | None, siblings: list[Snapshot], encoder: Encoder
) -> bytes:
    """The answer's body: this process's metrics plus *siblings*', encoded.

    Takes this process's snapshot (saved for its siblings, see
    :func:`divak.metrics.peers.share`), sums, builds the families and
    encodes: the whole cost of a scrape but the reading of siblings, run
    by :class:`MetricsHandler` on the metrics thread.

    :param metrics: the application's metrics, :data:`None` for none
    :param siblings: the snapshots :func:`divak.metrics.peers.gather` read
    :param encoder: from :func:`choose_format`
    """
    snapshots = [peers.share(metrics)] if metrics is not None else []
    return encoder(_Families(to_families(merge([*snapshots, *siblings]))))


class _PacedSamples(list[Sample]):
    """A family's samples; the encoders walk them through :func:`paced`."""

    def __iter__(self) -> typing.Iterator[Sample]:
        return paced(super().__iter__())


class _Families:
    """What ``prometheus_client``'s encoders read: an object with ``collect``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


class MetricsHandler(Probe, web.RequestHandler):
    """Answer Prometheus scrapes with the application's metrics.

    Route it in an application that has metrics (a :class:`divak.Recorder`;
    in any other application it answers an empty exposition):
    ``(r"/metrics", divak.MetricsHandler)``.

    * ``GET`` answers the Prometheus text exposition format (0.0.4), or
      OpenMetrics 1.0 when the ``Accept`` header asks for
      ``application/openmetrics-text`` (as Prometheus does); the encoding
      is ``prometheus_client``'s; an ``Accept`` header it cannot make sense
      of gets the text format;
    * ``target_info`` carries the attributes of the metrics' resource (the
      one the application's spans and logs have), and every sample the
      ``otel_scope_name`` and ``otel_scope_version`` labels;
    * the work of a scrape runs on the application's metrics thread, not
      on the IOLoop;
    * histogram buckets carry the trace id and span id of a sampled
      request that fell into them as an OpenMetrics exemplar;
    * when the service runs in several processes (``number_of_procs``),
      the answer is the sum over all of them, whichever process the scrape
      reached (:mod:`divak.metrics.peers`);
    * ``404 Not Found``, with the reason as plain text, when the
      application's metrics are not kept for scrapes (see
      :attr:`ApplicationMetrics.not_scraped
      <divak.metrics.ApplicationMetrics.not_scraped>`: metrics off,
      ``OTEL_SDK_DISABLED``, ``OTEL_METRICS_EXPORTER`` without
      ``prometheus``, or instruments recorded by the process's global
      ``MeterProvider``): a Prometheus target that is misconfigured shows
      as down, with the reason in its scrape error.
    """

    async def get(self) -> None:
        """Write the current metrics; ``Content-Type`` says which format.

        Collecting, summing and encoding run on the application's metrics
        thread (:meth:`~divak.metrics.ApplicationMetrics.run_off_loop`):
        other requests are served meanwhile.  A malformed or unknown
        ``Accept`` header gets the text format (see :func:`choose_format`).
        """
        encoder, content_type = choose_format(self.request.headers.get("Accept", ""))
        if isinstance(self.application, MetricsSource):
            metrics = self.application.divak_metrics
            if metrics.not_scraped is not None:
                self.set_status(404)
                self.set_header("Content-Type", "text/plain; charset=utf-8")
                self.set_header("Cache-Control", "no-store")
                self.finish(f"no metrics to scrape here: {metrics.not_scraped}\n")
                return
            siblings = await peers.gather(metrics)
            body = await metrics.run_off_loop(exposition, metrics, siblings, encoder)
        else:
            body = exposition(None, [], encoder)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)
