"""Sampling: which traces an application records and exports.

Without a sampler mix-in an application uses the sampler that the
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` environment
variables name; when they are not set, it samples every trace that is not
already decided upstream: OpenTelemetry's ``ParentBased(ALWAYS_ON)``.
"""

from __future__ import annotations

import typing

from opentelemetry.sdk.trace import sampling

from divak.settings import env_value, warn_once

if typing.TYPE_CHECKING:
    from divak.tracing.instrumentation import Instrumentation

__all__ = ["ProbabilisticSampler", "default_sampler", "sampler_from_env"]

#: The sampler names of ``OTEL_TRACES_SAMPLER`` divak knows, each with the
#: OpenTelemetry SDK sampler it stands for (a function of the ratio).
_SAMPLERS: dict[str, typing.Callable[[float], sampling.Sampler]] = {
    "always_on": lambda _: sampling.ALWAYS_ON,
    "always_off": lambda _: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda _: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda _: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": sampling.ParentBasedTraceIdRatio,
}
_DEFAULT_SAMPLER = "parentbased_always_on"


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

    The sampler is OpenTelemetry's ``ParentBased(TraceIdRatioBased(p))``:
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
        instrumentation.sampler = sampling.ParentBased(
            sampling.TraceIdRatioBased(probability)
        )
