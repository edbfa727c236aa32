"""The ``TracerProvider`` an application's spans come from.

:func:`tracer_provider` builds one for an application, or adopts the
OpenTelemetry SDK provider the process already set (one pipeline, see
:doc:`opentelemetry`).  :func:`unsampled_span` is the cheap path for a
request the sampler drops: the same decision and ids the SDK would make,
without the SDK's span machinery.
"""

from __future__ import annotations

import logging
import sys
import threading
import typing
import weakref

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind

from divak import propagation

__all__ = ["PresetTraceIds", "tracer_provider", "unsampled_span"]

logger = logging.getLogger(__name__)

_DEFAULT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_RANDOM_FLAGS = trace.TraceFlags(
    trace.TraceFlags.DEFAULT | getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0)
)

#: Providers divak made; another application never adopts one of them.
_OWN_PROVIDERS: weakref.WeakSet[TracerProvider] = weakref.WeakSet()


class PresetTraceIds(RandomIdGenerator):
    """Random ids, as the SDK's default; the next trace id may be set first.

    :func:`unsampled_span` asks the sampler with a new trace id; when the
    answer is "sample", the SDK must start the span with that same id, or
    the sampler would decide again, on another one.
    """

    def __init__(self) -> None:
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        """Make *trace_id* the next trace id this thread generates."""
        self._next.value = trace_id

    def generate_trace_id(self) -> int:
        """The preset trace id, once, else a random one."""
        value = getattr(self._next, "value", None)
        if value is not None:
            self._next.value = None
            return value
        return super().generate_trace_id()


def tracer_provider(
    settings: typing.Mapping[str, typing.Any],
    service: str | None,
    sampler: sampling.Sampler | None,
) -> tuple[TracerProvider, bool]:
    """The provider for an application, and whether divak made it.

    With ``settings['divak_global_provider']`` true (the default), an SDK
    provider the process already set globally is adopted (its sampler and
    resource apply); otherwise a new one is made, with *sampler* wrapped in
    :class:`~divak.propagation.PropagatedSampler`, ``service.name``
    *service*, attribute values limited by
    ``settings['divak_max_attribute_length']`` and no exit hook, and it
    becomes the global provider when none is set.

    :param settings: the application's settings
    :param service: the service name given in code or settings, or None
    :param sampler: the sampler given in code, or None for the default
        (``OTEL_TRACES_SAMPLER``, else parent-based always-on)
    """
    current = trace.get_tracer_provider()
    use_global = settings.get("divak_global_provider", True)
    if (
        use_global
        and isinstance(current, TracerProvider)
        and current not in _OWN_PROVIDERS
    ):
        return current, False
    if sampler is None:
        from divak.tracing.sampling import default_sampler

        sampler = default_sampler()
    provider = TracerProvider(
        sampler=propagation.PropagatedSampler(sampler),
        resource=Resource.create({SERVICE_NAME: service} if service else {}),
        id_generator=PresetTraceIds(),
        shutdown_on_exit=False,
        span_limits=SpanLimits(
            max_span_attribute_length=settings.get("divak_max_attribute_length")
        ),
    )
    _OWN_PROVIDERS.add(provider)
    if use_global and isinstance(current, trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return provider, True


def unsampled_span(
    tracer: trace.Tracer, name: str, parent: otel_context.Context
) -> trace.NonRecordingSpan | None:
    """The SERVER span of a request the sampler drops, or :data:`None`.

    The same decision and ids the SDK's ``Tracer.start_span`` would make
    (the provider's own sampler and id generator, the parent's trace id,
    sampled flag off, the W3C Level 2 random flag as the SDK sets it), for
    a fraction of the cost.  :data:`None` when the trace is sampled (the
    SDK then starts the span, with the trace id decided on), when the
    tracer is not the SDK's (``OTEL_SDK_DISABLED``), and for a new trace
    in a provider divak did not make.

    :param tracer: the application's tracer
    :param name: the span's name, as the sampler sees it
    :param parent: the context the propagators extracted
    """
    sampler = getattr(tracer, "sampler", None)
    ids = getattr(tracer, "id_generator", None)
    if sampler is None or ids is None:
        return None
    parent_context = trace.get_current_span(parent).get_span_context()
    valid = parent_context.is_valid
    if valid:
        trace_id = parent_context.trace_id
    elif isinstance(ids, PresetTraceIds):
        trace_id = ids.generate_trace_id()
    else:  # a provider of the user's: its ids, its way
        return None
    result = sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
    if result.decision.is_recording():
        if not valid:
            ids.preset(trace_id)
        return None
    if valid:
        random_id = getattr(parent_context.trace_flags, "random_trace_id", False)
    else:
        random_id = getattr(ids, "is_trace_id_random", bool)()
    return trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_RANDOM_FLAGS if random_id else _DEFAULT_FLAGS,
            trace_state=result.trace_state,
        )
    )


_warned_tornado = False


def warn_if_tornado_instrumented() -> None:
    """One WARNING when OpenTelemetry's tornado instrumentation is active too."""
    global _warned_tornado
    module = sys.modules.get("opentelemetry.instrumentation.tornado")
    if _warned_tornado or module is None:
        return
    instrumentor = getattr(module, "TornadoInstrumentor", None)
    if instrumentor is None or not instrumentor().is_instrumented_by_opentelemetry:
        return
    _warned_tornado = True
    logger.warning(
        "OpenTelemetry's tornado instrumentation is active: it adds a second "
        "span to every request divak traces; divak traces Tornado itself, so "
        "disable it (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado)"
    )
