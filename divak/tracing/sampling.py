"""Sampling: which traces an application records and exports.

Without a sampler mix-in an application uses the sampler that the
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` environment
variables name; when they are not set, it samples every trace that is not
already decided upstream: OpenTelemetry's ``ParentBased(ALWAYS_ON)``.
"""

from __future__ import annotations

import typing

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import sampling

from divak.settings import env_value, warn_once

if typing.TYPE_CHECKING:
    from divak.tracing.instrumentation import Instrumentation

__all__ = [
    "ParentBasedRatio",
    "ProbabilisticSampler",
    "default_sampler",
    "sampler_from_env",
]

#: The sampler names of ``OTEL_TRACES_SAMPLER`` divak knows, each with the
#: OpenTelemetry SDK sampler it stands for (a function of the ratio).
_SAMPLERS: dict[str, typing.Callable[[float], sampling.Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda _: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: ParentBasedRatio(ratio),
}
_DEFAULT_SAMPLER = "parentbased_always_on"


class ParentBasedRatio(sampling.ParentBasedTraceIdRatio):
    """OpenTelemetry's ``ParentBased(TraceIdRatioBased(rate))``, decided inline.

    The SDK's :class:`~opentelemetry.sdk.trace.sampling.ParentBasedTraceIdRatio`
    (a subclass of it: same description, same delegates), with its
    decision taken in one call instead of through the SDK's chain of
    delegate samplers, for every request of a service that samples a
    share of its traces.  The decisions are the SDK's, case by case:

    * no valid parent: sampled when the trace id's lower 64 bits are below
      the ratio's bound (:class:`~opentelemetry.sdk.trace.sampling.TraceIdRatioBased`),
      no trace state;
    * a valid parent, remote or local: its sampled flag decides (the
      default delegates, ``ALWAYS_ON`` and ``ALWAYS_OFF``), and its trace
      state is kept.

    A dropped span gets no attributes, a sampled one the attributes it was
    asked with, as the SDK's samplers do.

    :param rate: the share of new traces to sample, from ``0.0`` to ``1.0``
    :raises ValueError: when *rate* is outside ``[0, 1]`` (the SDK's check)
    """

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        root = sampling.TraceIdRatioBased(rate)
        self._ratio_bound = root.bound
        self._trace_id_limit = root.TRACE_ID_LIMIT

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: typing.Any = None,
        links: typing.Any = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        """Decide for a new span; see the class documentation."""
        sampled, state = self.decision(
            trace.get_current_span(parent_context).get_span_context(), trace_id
        )
        if sampled:
            return sampling.SamplingResult(
                sampling.Decision.RECORD_AND_SAMPLE, attributes, state
            )
        return sampling.SamplingResult(sampling.Decision.DROP, None, state)

    def decision(
        self, parent: trace.SpanContext, trace_id: int
    ) -> tuple[bool, trace.TraceState | None]:
        """Whether a span under *parent* with *trace_id* is sampled, and the
        trace state it carries: :meth:`should_sample`'s answer, without a
        ``SamplingResult``.

        :param parent: the parent's span context (invalid for a new trace)
        :param trace_id: the span's trace id
        """
        if parent.is_valid:
            return bool(parent.trace_flags.sampled), parent.trace_state
        return trace_id & self._trace_id_limit < self._ratio_bound, None


def default_sampler() -> sampling.Sampler:
    """The sampler of an application that sets none in code.

    The one ``OTEL_TRACES_SAMPLER`` names (see
    :func:`sampler_from_env`), by default ``ParentBased(ALWAYS_ON)``:
    follow the parent, sample new traces.
    """
    return sampler_from_env()


def sampler_from_env() -> sampling.Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` name.

    Follows the OpenTelemetry SDK environment variable specification:
    ``always_on``, ``always_off``, ``traceidratio``,
    ``parentbased_always_on`` (the default), ``parentbased_always_off`` and
    ``parentbased_traceidratio``, each built from the OpenTelemetry SDK's
    own sampler classes.  The ratio samplers take their probability from
    ``OTEL_TRACES_SAMPLER_ARG`` (default ``1.0``).  An unknown sampler
    name (``jaeger_remote`` and ``xray`` included) or a ratio outside
    ``[0, 1]`` is logged as a WARNING and the default is used.

    :returns: an :class:`opentelemetry.sdk.trace.sampling.Sampler`
    """
    name = env_value("OTEL_TRACES_SAMPLER").lower() or _DEFAULT_SAMPLER
    factory = _SAMPLERS.get(name)
    if factory is None:
        warn_once(
            "sampler:" + name,
            "ignoring OTEL_TRACES_SAMPLER=%r: not one of %s",
            name,
            ", ".join(_SAMPLERS),
        )
        name, factory = _DEFAULT_SAMPLER, _SAMPLERS[_DEFAULT_SAMPLER]
    ratio = 1.0
    argument = env_value("OTEL_TRACES_SAMPLER_ARG")
    if argument and name.endswith("traceidratio"):
        try:
            ratio = float(argument)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            warn_once(
                "sampler-arg:" + argument,
                "ignoring OTEL_TRACES_SAMPLER_ARG=%r: not a probability from 0 to 1",
                argument,
            )
            ratio = 1.0
    return factory(ratio)


class ProbabilisticSampler:
    """Application mix-in that samples a fixed share of new traces.

    To use it:

    * mix it into a :class:`divak.Recorder` application;
    * call :meth:`set_divak_sample_probability` in the application's
      ``__init__``; the probability set in code wins over
      ``OTEL_TRACES_SAMPLER``.

    The sampler is OpenTelemetry's ``ParentBased(TraceIdRatioBased(p))``
    (:class:`ParentBasedRatio`, which decides as the SDK's does, inline):
    an upstream sampling decision (W3C ``sampled`` flag, B3 sampled or
    debug) always wins, and a new trace is sampled from its trace id, so
    every service configured with the same probability takes the same
    decision for the same trace.
    """

    if typing.TYPE_CHECKING:
        divak_instrumentation: Instrumentation

    def set_divak_sample_probability(self, probability: float) -> None:
        """Sample new traces with *probability*.

        :param probability: share of new traces to sample, from ``0.0``
            (none) to ``1.0`` (all)
        :raises ValueError: when *probability* is outside ``[0, 1]``
        :raises RuntimeError: after the application handled its first
            request (the sampler is fixed by then)
        """
        probability = float(probability)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(
                f"sample probability must be between 0 and 1, not {probability!r}"
            )
        instrumentation = self.divak_instrumentation
        if instrumentation.started:
            raise RuntimeError("the sampler cannot change once tracing started")
        instrumentation.sampler = ParentBasedRatio(probability)
