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
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind

from divak import propagation
from divak.export.reporters import reporters_from_env
from divak.metrics.instruments import with_instance_id
from divak.propagation.b3 import B3DebugMarker
from divak.settings import env_value
from divak.tracing.sampling import ParentBasedRatio, default_sampler

__all__ = [
    "OWNER_KEY",
    "PresetTraceIds",
    "SpanOwner",
    "SpanRouter",
    "adopted_provider",
    "application_reporters",
    "join",
    "tracer_provider",
    "turn_off_tornado_instrumentation",
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

_said_exporter_left = False

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
    adopted = adopted_provider(settings)
    if adopted is not None:
        _warn_not_applied(adopted, service, sampler)
        return adopted, False
    current = trace.get_tracer_provider()
    use_global = settings.get("divak_global_provider", True)
    if sampler is None:
        sampler = default_sampler()
    provider = TracerProvider(
        sampler=propagation.PropagatedSampler(sampler),
        resource=with_instance_id(
            Resource.create({SERVICE_NAME: service} if service else {})
        ),
        id_generator=PresetTraceIds(),
        shutdown_on_exit=False,
        span_limits=SpanLimits(max_span_attribute_length=_attribute_length(settings)),
    )
    _OWN_PROVIDERS.add(provider)
    if use_global and isinstance(current, trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return provider, True


def adopted_provider(
    settings: typing.Mapping[str, typing.Any],
) -> TracerProvider | None:
    """The SDK provider the process set that an application would adopt, if any.

    That is the global provider when it is an OpenTelemetry SDK
    ``TracerProvider`` divak did not make (``opentelemetry-instrument``,
    ``trace.set_tracer_provider`` in start-up code) and
    ``settings['divak_global_provider']`` is true (the default); else
    :data:`None` (divak makes a provider, see :func:`tracer_provider`).

    :param settings: the application's settings
    """
    if not settings.get("divak_global_provider", True):
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider) and current not in _OWN_PROVIDERS:
        return current
    return None


def application_reporters(
    in_code: typing.Sequence[SpanExporter], own_provider: bool
) -> list[SpanExporter]:
    """The reporters an application exports its spans with.

    The reporters given in code (:meth:`divak.Recorder.add_divak_reporter`)
    when there are any.  Else, in a provider divak made, the ones
    ``OTEL_TRACES_EXPORTER`` names
    (:func:`~divak.export.reporters.reporters_from_env`); in a provider the
    process set (*own_provider* false), none: whoever set it exports
    through it (``opentelemetry-instrument`` adds the exporters
    ``OTEL_TRACES_EXPORTER`` names to it), and reporters built by divak
    from the same variable would send every span a second time.  That is
    logged once, at INFO, when the variable is set.

    :param in_code: the reporters given in code
    :param own_provider: whether divak made the application's provider
    :returns: a new list
    """
    global _said_exporter_left
    if in_code:
        return list(in_code)
    if own_provider:
        return reporters_from_env()
    value = env_value("OTEL_TRACES_EXPORTER")
    if value and not _said_exporter_left:
        _said_exporter_left = True
        logger.info(
            "OTEL_TRACES_EXPORTER=%s is honoured by the TracerProvider the "
            "process set, which exports every span; divak adds no reporter of "
            "its own to it (add one in code to export elsewhere too)",
            value,
        )
    return []


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
    SDK then starts the span, with the trace id decided on, and, in a
    provider divak made, with the decision taken here: see
    :meth:`~divak.propagation.PropagatedSampler.decide`), when the
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
    sampler = tracer.sampler
    if isinstance(sampler, propagation.PropagatedSampler):
        ratio = sampler.delegate
        if isinstance(ratio, ParentBasedRatio) and not sampler.b3_state(parent):
            # The common case, decided without the samplers' result objects.
            sampled, state = ratio.decision(parent_context, trace_id)
            if sampled:  # kept for the SDK's start_span: one decision
                sampler.keep(parent, trace_id, _sampled(state))
        else:
            # A "sample" is kept for the SDK's start_span: one decision.
            result = sampler.decide(parent, trace_id, name, SpanKind.SERVER)
            sampled, state = result.decision.is_recording(), result.trace_state
    else:
        result = sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
        sampled, state = result.decision.is_recording(), result.trace_state
    if sampled:
        if new_trace and isinstance(ids, PresetTraceIds):
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
            trace_state=state,
        )
    )


def _sampled(state: trace.TraceState | None) -> sampling.SamplingResult:
    return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, None, state)


_tornado_turned_off = False


def turn_off_tornado_instrumentation() -> bool:
    """Turn OpenTelemetry's Tornado instrumentation off, once, with one WARNING.

    ``opentelemetry-instrument`` (or code calling
    ``TornadoInstrumentor().instrument()``) patches every
    :class:`tornado.web.RequestHandler` class to start a span of its own
    and ``AsyncHTTPClient.fetch`` to start a CLIENT span and inject its own
    context.  divak traces the same two things itself (the SERVER span of
    each request, a CLIENT span per
    :meth:`~divak.HttpClientMixin.send_request` attempt), so with both each
    request gets a second span nested under divak's, each outgoing call a
    second CLIENT span, and the downstream service a parent that is not
    divak's span.  divak wins: the instrumentation's public
    ``uninstrument()`` removes its patches, for the whole process (a
    Tornado application without divak in the same process is no longer
    traced by it).  Called when an application starts tracing; the
    WARNING names ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado``, the
    way to keep the instrumentation from loading at all.

    Nothing happens when the instrumentation was never imported (it is
    looked up in :data:`sys.modules`, so divak does not import it) or is
    not active.

    :returns: :data:`True` when this call turned it off
    """
    global _tornado_turned_off
    module = sys.modules.get("opentelemetry.instrumentation.tornado")
    if module is None:
        return False
    instrumentor = module.TornadoInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        return False
    instrumentor.uninstrument()
    if not _tornado_turned_off:
        _tornado_turned_off = True
        logger.warning(
            "OpenTelemetry's tornado instrumentation was active: divak turned it "
            "off, as divak traces Tornado's requests and AsyncHTTPClient calls "
            "itself and each would get a second span; set "
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tornado to not load it"
        )
    return True


#: Characters kept of a span attribute's value when neither
#: ``settings['divak_max_attribute_length']`` nor OpenTelemetry's
#: ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``/``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``
#: says otherwise (the SDK's own default is no limit).
DEFAULT_ATTRIBUTE_LENGTH = 4096


def _attribute_length(settings: typing.Mapping[str, typing.Any]) -> int | None:
    limit = settings.get("divak_max_attribute_length")
    if limit is not None:
        return int(limit)
    if env_value("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT") or env_value(
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
    ):
        return None  # the SDK reads the variable
    return DEFAULT_ATTRIBUTE_LENGTH
