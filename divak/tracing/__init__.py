"""Tracing: the SERVER span of every request, its children, and sampling.

:class:`Recorder` (:mod:`divak.tracing.recorder`) is the application
mix-in that owns each request's trace through one composed
:class:`~divak.tracing.instrumentation.Instrumentation`; the provider and
its cheap unsampled path are in :mod:`divak.tracing.provider`;
:class:`RequestTracker` (:mod:`divak.tracing.tracker`) gives handlers
``record_operation`` and tags; :class:`ProbabilisticSampler`
(:mod:`divak.tracing.sampling`) sets the sampler; route templates, excluded
URLs and captured headers have a module each.
"""

from divak.context import RequestContext
from divak.tracing.instrumentation import Instrumentation
from divak.tracing.recorder import Recorder
from divak.tracing.sampling import ProbabilisticSampler
from divak.tracing.tracker import RequestTracker

__all__ = [
    "Instrumentation",
    "ProbabilisticSampler",
    "Recorder",
    "RequestContext",
    "RequestTracker",
]
