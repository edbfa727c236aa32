"""Sampling: which traces an application records and exports.

Without a sampler mix-in an application uses the sampler that the
``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` environment
variables name; when they are not set, it samples every trace that is not
already decided upstream: OpenTelemetry's ``ParentBased(ALWAYS_ON)``.
"""

from __future__ import annotations

import typing

from opentelemetry.sdk.trace import sampling

from divak import environment

if typing.TYPE_CHECKING:
    from divak.instrumentation import Instrumentation

__all__ = ["ProbabilisticSampler", "default_sampler"]


def default_sampler() -> sampling.Sampler:
    """The sampler of an application that sets none in code.

    The one ``OTEL_TRACES_SAMPLER`` names (see
    :func:`divak.environment.sampler`), by default ``ParentBased(ALWAYS_ON)``:
    follow the parent, sample new traces.
    """
    return environment.sampler()


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
