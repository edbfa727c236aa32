"""The ``TracerProvider`` an application's spans come from, and who exports them.

:func:`tracer_provider` builds one for an application, or adopts the
OpenTelemetry SDK provider the process already set (one pipeline, see
:doc:`opentelemetry`).  :func:`join` adds an application's span queues to
it behind the provider's one :class:`SpanRouter`, so that every span is
exported by the application whose request it belongs to, and by no other.
:func:`unsampled_span` is the cheap path for a request the sampler drops:
the same decision and ids the SDK would make, without the SDK's span
machinery.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import typing
import weakref

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    Tracer,
    TracerProvider,
    sampling,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind

from divak import propagation
from divak.propagation.b3 import B3DebugMarker
from divak.tracing.sampling import default_sampler

__all__ = [
    "OWNER_KEY",
    "PresetTraceIds",
    "SpanOwner",
    "SpanRouter",
    "join",
    "tracer_provider",
    "unsampled_span",
]

logger = logging.getLogger(__name__)

#: W3C Trace Context Level 2's random-trace-id flag as the installed
#: OpenTelemetry API names it, 0 with an older API (whose SDK never sets
#: it).  A probe on a foreign module: which release is installed.
_RANDOM_FLAG: int = getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0)
_DEFAULT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_RANDOM_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT | _RANDOM_FLAG)

#: Providers divak made; another application never adopts one of them.
_OWN_PROVIDERS: weakref.WeakSet[TracerProvider] = weakref.WeakSet()

#: The one :class:`SpanRouter` of each provider an application joined.
_ROUTERS: weakref.WeakKeyDictionary[TracerProvider, SpanRouter] = (
    weakref.WeakKeyDictionary()
)
_ROUTERS_LOCK = threading.Lock()

#: Context key of the :class:`SpanOwner` of the request being handled:
#: spans started under a context holding it belong to that application.
OWNER_KEY = otel_context.create_key("divak.span_owner")


class PresetTraceIds(RandomIdGenerator):
    """Random ids, as the SDK's default; the next trace id may be set first.

    :func:`unsampled_span` asks the sampler with a new trace id; when the
    answer is "sample", the SDK must start the span with that same id, or
    the sampler would decide again, on another one.
    """

    def __init__(self) -> None:
        self._next = _NextTraceId()

    def preset(self, trace_id: int) -> None:
        """Make *trace_id* the next trace id this thread generates."""
        self._next.value = trace_id

    def generate_trace_id(self) -> int:
        """The preset trace id, once, else a random one."""
        value = self._next.value
        if value is not None:
            self._next.value = None
            return value
        return super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        """:data:`True`: a preset id is one this generator made at random."""
        return True


class _NextTraceId(threading.local):
    """The trace id a thread presets, :data:`None` when there is none."""

    value: int | None = None


def tracer_provider(
    settings: typing.Mapping[str, typing.Any],
    service: str | None,
    sampler: sampling.Sampler | None,
) -> tuple[TracerProvider, bool]:
    """The provider for an application, and whether divak made it.

    Which side wins (see :doc:`opentelemetry`):

    * With ``settings['divak_global_provider']`` true (the default), an SDK
      provider the process set globally before (your start-up code,
      ``opentelemetry-instrument``) is adopted, by every application of
      the process: its sampler and resource (``service.name``) apply.  A
      *service* or *sampler* given in code that therefore cannot take
      effect is logged as one WARNING each, naming both sides.
    * Otherwise a new provider is made, with *sampler* wrapped in
      :class:`~divak.propagation.PropagatedSampler`, ``service.name``
      *service*, attribute values limited by
      ``settings['divak_max_attribute_length']`` and no exit hook; it
      becomes the global provider when none is set (the first
      application), else it stays the application's own.  A provider
      divak made is never adopted by another application.

    :param settings: the application's settings
    :param service: the service name given in code or settings, or None
    :param sampler: the sampler given in code, or None for the default
        (``OTEL_TRACES_SAMPLER``, else parent-based always-on)
    :returns: the provider, and :data:`True` when divak made it (the
        application then shuts it down)
    """
    current = trace.get_tracer_provider()
    use_global = settings.get("divak_global_provider", True)
    if (
        use_global
        and isinstance(current, TracerProvider)
        and current not in _OWN_PROVIDERS
    ):
        _warn_not_applied(current, service, sampler)
        return current, False
    if sampler is None:
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


def _warn_not_applied(
    provider: TracerProvider, service: str | None, sampler: sampling.Sampler | None
) -> None:
    """One WARNING per setting the adopted *provider* overrides."""
    theirs = provider.resource.attributes.get(SERVICE_NAME)
    if service and service != theirs:
        logger.warning(
            "service name %r cannot take effect: the process set a global "
            "TracerProvider before divak started, and its service.name %r names "
            "every span; set the name there (OTEL_SERVICE_NAME), or set "
            "settings['divak_global_provider'] = False for a provider of the "
            "application's own",
            service,
            theirs,
        )
    if sampler is not None:
        logger.warning(
            "sampler %s cannot take effect: the process set a global "
            "TracerProvider before divak started, and its sampler %s decides; "
            "set settings['divak_global_provider'] = False for a provider of "
            "the application's own",
            sampler.get_description(),
            provider.sampler.get_description(),
        )


def _rehomed(span: ReadableSpan, resource: Resource) -> ReadableSpan:
    """*span* as the application with *resource* reports it."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=resource,
        attributes=span.attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class SpanOwner:
    """One application's share of a provider: its span queues and resource.

    Made by :func:`join`.  The application marks the context of each
    request it handles with :meth:`mark`; every span started under that
    context, by any tracer, goes to this owner's queues and to no other
    application's (:class:`SpanRouter` does the routing).

    :param router: the router of the provider the application joined
    :param queues: the application's span processors, one
        :class:`~divak.export.queue.SpanQueue` per reporter; the list is
        the application's own (not copied), filled before the first span
    :param resource: the resource the application's spans are reported
        with (its provider's)
    """

    __slots__ = ("router", "queues", "resource", "__weakref__")

    def __init__(
        self,
        router: SpanRouter,
        queues: typing.Sequence[SpanProcessor],
        resource: Resource,
    ) -> None:
        self.router = router
        self.queues = queues
        self.resource = resource

    def mark(self, context: otel_context.Context) -> otel_context.Context:
        """*context*, with the spans started under it belonging to this owner.

        :param context: a request's context, as the propagators extracted it
        """
        return otel_context.set_value(OWNER_KEY, self, context)

    def deliver(self, span: ReadableSpan, router: SpanRouter) -> None:
        """Hand the finished *span* to every queue (they keep sampled ones).

        A span that *router*, the router of another provider, ended (a span
        of other instrumentation, made by the global provider, inside a
        request of an application with a provider of its own) is reported
        with this owner's resource, so under this application's
        ``service.name``.
        """
        if router is not self.router:
            context = span.context
            if context is None or not context.trace_flags.sampled:
                return  # the queues would drop it: no copy
            span = _rehomed(span, self.resource)
        for queue in self.queues:
            queue.on_end(span)

    def shutdown(self) -> None:
        """Leave the router, then flush and stop the queues (blocks)."""
        self.router.remove(self)
        for queue in self.queues:
            queue.shutdown()


class SpanRouter(SpanProcessor):
    """The span processor divak adds to a provider, once, for all applications.

    Each application that uses the provider is a :class:`SpanOwner` of it
    (:func:`join`).  A finished span goes to exactly one owner:

    * the application whose request it was started in (the context it was
      started under holds that application's owner, see
      :meth:`SpanOwner.mark`), even when that application has a provider
      of its own;
    * else (a span started outside any request: start-up code, a
      background task) the first application that joined this provider
      and is still running.

    So two applications sharing one provider never export each other's
    spans, and no span is exported twice by divak.  Spans that no
    application takes (no owner left) are left to the provider's other
    processors.
    """

    #: Open spans of an owner other than the first one remembered at most;
    #: beyond, the oldest are forgotten (spans someone never ends).
    MAX_OPEN_SPANS = 65536

    def __init__(self) -> None:
        self._owners: tuple[SpanOwner, ...] = ()
        # span id -> owner, from on_start to on_end (the SDK hands on_end
        # a new ReadableSpan, not the span on_start saw).
        self._started: dict[int, SpanOwner] = {}
        self._lock = threading.Lock()

    @property
    def owners(self) -> tuple[SpanOwner, ...]:
        """The applications that joined, in the order they joined."""
        return self._owners

    def add(self, owner: SpanOwner) -> None:
        """Add *owner*, last; adding it again does nothing."""
        with self._lock:
            if owner not in self._owners:
                self._owners += (owner,)

    def remove(self, owner: SpanOwner) -> None:
        """Remove *owner* (an application that stopped); absent: nothing."""
        with self._lock:
            self._owners = tuple(o for o in self._owners if o is not owner)

    def on_start(
        self, span: typing.Any, parent_context: otel_context.Context | None = None
    ) -> None:
        """Remember the owner of *span* unless it is this provider's first."""
        owner = otel_context.get_value(OWNER_KEY, parent_context)
        if owner is not None:
            owners = self._owners
            if not owners or owner is not owners[0]:
                started = self._started
                started[span.context.span_id] = typing.cast(SpanOwner, owner)
                if len(started) > self.MAX_OPEN_SPANS:
                    try:
                        del started[next(iter(started))]
                    except (KeyError, RuntimeError, StopIteration):
                        pass  # another thread changed it first

    def on_end(self, span: ReadableSpan) -> None:
        """Hand *span* to its owner's queues (see the class documentation)."""
        started = self._started
        owner = started.pop(span.context.span_id, None) if started else None
        if owner is None:
            owners = self._owners
            if not owners:
                return
            owner = owners[0]
        owner.deliver(span, self)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush every owner's queues, within *timeout_millis* in all.

        :returns: :data:`True` when every queue was flushed in time
        """
        deadline = time.monotonic() + timeout_millis / 1000
        flushed = True
        for owner in self._owners:
            for queue in owner.queues:
                left = max(deadline - time.monotonic(), 0.0)
                flushed = queue.force_flush(int(left * 1000)) and flushed
        return flushed

    def shutdown(self) -> None:
        """The provider shuts down: flush and stop every owner's queues."""
        for owner in self._owners:
            owner.shutdown()


def join(
    provider: TracerProvider, queues: typing.Sequence[SpanProcessor]
) -> SpanOwner:
    """Make an application with span *queues* an owner of *provider*'s spans.

    The first time a provider is joined, divak adds its processors to it:
    one :class:`~divak.propagation.B3DebugMarker` and one
    :class:`SpanRouter`; never again, however many applications join it
    (or how often).  The queues themselves are reached through the
    router, not added to the provider.

    :param provider: the provider :func:`tracer_provider` returned
    :param queues: the application's span queues (see :class:`SpanOwner`)
    :returns: the application's :class:`SpanOwner`; its
        :meth:`~SpanOwner.shutdown` leaves the provider again
    """
    with _ROUTERS_LOCK:
        router = _ROUTERS.get(provider)
        if router is None:
            router = _ROUTERS[provider] = SpanRouter()
            provider.add_span_processor(B3DebugMarker())
            provider.add_span_processor(router)
    owner = SpanOwner(router, queues, provider.resource)
    router.add(owner)
    return owner


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
    if not isinstance(tracer, Tracer):
        return None
    ids = tracer.id_generator
    parent_context = trace.get_current_span(parent).get_span_context()
    new_trace = not parent_context.is_valid
    if not new_trace:
        trace_id = parent_context.trace_id
    elif isinstance(ids, PresetTraceIds):
        trace_id = ids.generate_trace_id()
    else:  # a provider of the user's: its ids, its way
        return None
    result = tracer.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
    if result.decision.is_recording():
        if isinstance(ids, PresetTraceIds) and new_trace:
            ids.preset(trace_id)
        return None
    if new_trace:  # a PresetTraceIds id: random
        random_id = bool(_RANDOM_FLAG) and ids.is_trace_id_random()
    else:
        random_id = bool(parent_context.trace_flags & _RANDOM_FLAG)
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
    # The module is imported: its public TornadoInstrumentor is there.
    if not module.TornadoInstrumentor().is_instrumented_by_opentelemetry:
        return
    _warned_tornado = True
    logger.warning(
        "OpenTelemetry's tornado instrumentation is active: it adds a second "
        "span to every request divak traces; divak traces Tornado itself, so "
        "disable it (OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado)"
    )
