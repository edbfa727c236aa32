"""WebSocket connections: one SERVER span from the upgrade until the close.

A WebSocket starts as an HTTP request that :class:`tornado.websocket.WebSocketHandler`
answers with ``101 Switching Protocols``; the connection then lives for
seconds or hours.  In a :class:`divak.Recorder` application the
request's :class:`~divak.tracing.pipeline.RequestPipeline` keeps the
request's SERVER span open for that whole life and ends it when the
connection closes, with ``http.response.status_code`` 101 and

* ``divak.websocket.messages_received`` and ``divak.websocket.messages_sent``:
  data messages (text or binary; not pings, pongs or close frames);
* ``divak.websocket.close_code``: the code of the close frame the peer
  sent, else the code this side sent when it closed first, else ``1006``
  (RFC 6455, section 7.1.5: closed without a close frame; Tornado reports
  a close frame without a code the same way);
* status ERROR, ``error.type`` and an ``exception`` event when ``open``,
  ``on_message`` or ``on_close`` raised.

The metrics ``divak.websocket.connections.active``,
``divak.websocket.connection.duration`` and ``divak.websocket.messages``
are recorded (see :doc:`websocket`), and the access log gets a second line
at the close (:func:`divak.logs.access.log_websocket_close`).  This holds
for every ``WebSocketHandler`` the application routes, with or without
divak's handler mix-ins.

.. rubric:: Where each fact comes from (the seams)

* **The close.**  ``WebSocketHandler.get`` awaits the connection's frame
  loop, which calls ``on_close`` last: the handler's task is done exactly
  when the connection is closed.  The pipeline already waits for that
  task before it ends a span, so it learns of the close with no help from
  the handler, and reads the peer's code from the handler's documented
  ``close_code`` attribute.
* **Exceptions.**  Tornado reports what ``open``, ``on_message`` or
  ``on_close`` raised through the handler's ``log_exception``, inside the
  handler's task; the pipeline's filter on ``tornado.application``
  hands it to the span as for any request (see :mod:`divak.tracing.pipeline`).
* **The context.**  ``open``, ``on_message`` and ``on_close`` run in the
  handler's task (or tasks it starts, for coroutines), which copied the
  request's OpenTelemetry context: log records carry the connection's
  trace id and request id, and spans started there are children of the
  connection's span.
* **Messages** are the one thing the application cannot see: Tornado's
  protocol object calls the handler's ``on_message``, and the handler's
  ``write_message`` writes frames to the stream it detached; no
  application hook is on either path and the protocol keeps no count.
  So the count needs the handler class.  Rather than asking every handler
  to mix something in, the application composes it:
  :meth:`divak.Recorder.get_handler_delegate` serves a request routed to a
  ``WebSocketHandler`` subclass with a subclass of it, derived once per
  application and class (:meth:`WebSocketConnections.handler_class`),
  that puts :class:`WebSocketTracking` in front.  It overrides only the
  handler methods Tornado documents for overriding (``on_message``,
  ``write_message``, ``close``) and chains to ``super()``; no class of
  Tornado's or of the application is changed.

.. rubric:: What the derived class means for a handler

The handler is an instance of the derived class: ``isinstance`` checks
against its own class hold, and the derived class has the same
``__name__``, ``__qualname__``, ``__module__`` and docstring, so loggers
named after the class (:class:`divak.Logger`) and log lines stay the same.
``type(self)`` is the derived class, though: a class attribute *assigned*
through ``type(self)`` (``type(self).clients = ...``) lands on it, not on
the handler's own class; assign through the class's name instead
(reading, and mutating a shared ``set``, work either way).

.. rubric:: settings['divak_websocket_message_spans']

:data:`True` (or the ``DIVAK_WEBSOCKET_MESSAGE_SPANS`` environment
variable, ``1``/``true``) gives every received message an INTERNAL span,
child of the connection's span, named ``receive {route}``, with
``divak.websocket.message.type`` (``text`` or ``binary``) and
``divak.websocket.message.index`` (1 for the first message); it lasts as
long as ``on_message`` (its coroutine included), is current while it
runs (so ``record_operation`` nests under it), and records an exception
that escapes.  Off by default: a long-lived connection with many messages
would otherwise make a trace of thousands of spans.

.. rubric:: The drain

:meth:`WebSocketConnections.close_all` sends every open connection a close
frame with code ``1001`` (going away); :class:`divak.Runner` calls it when
its drain starts, waits for the connections to close (their spans end
then) within ``shutdown_limit``, and cuts off the ones still open
(:meth:`WebSocketConnections.abort_all`).  A connection accepted after
``close_all`` is closed with the same code at once.
"""

from __future__ import annotations

import asyncio
import time
import types
import typing

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from tornado import ioloop, web, websocket

from divak import semconv
from divak.context import RequestContext, activated
from divak.logs import access
from divak.metrics.instruments import WebSocketRoute
from divak.settings import parse_bool, setting

if typing.TYPE_CHECKING:
    from divak.tracing.instrumentation import Instrumentation

__all__ = [
    "ABNORMAL_CLOSURE",
    "GOING_AWAY",
    "NO_STATUS_RECEIVED",
    "WebSocketConnection",
    "WebSocketConnections",
    "WebSocketTracking",
    "accepted",
    "message_spans_setting",
]

#: RFC 6455 close code: the server goes down (what a drain sends).
GOING_AWAY = 1001
#: RFC 6455 close code: a close frame without a code was sent.
NO_STATUS_RECEIVED = 1005
#: RFC 6455 close code: the connection closed without a close frame.
ABNORMAL_CLOSURE = 1006

_Message = str | bytes
_OnMessage = typing.Callable[[_Message], typing.Awaitable[None] | None]


def message_spans_setting(settings: typing.Mapping[str, typing.Any]) -> bool:
    """Whether received messages get spans of their own.

    ``settings['divak_websocket_message_spans']``, else the
    ``DIVAK_WEBSOCKET_MESSAGE_SPANS`` environment variable, default
    :data:`False`.

    :raises ValueError: naming the setting, for a value that is not a boolean
    """
    value, source = setting(
        settings,
        "divak_websocket_message_spans",
        "DIVAK_WEBSOCKET_MESSAGE_SPANS",
        False,
    )
    return parse_bool(value, source)


class WebSocketTracking(websocket.WebSocketHandler):
    """Handler mix-in: tells the connection about its messages and its close.

    :meth:`divak.Recorder.get_handler_delegate` puts it in front of every
    ``WebSocketHandler`` subclass the application routes (see
    :mod:`divak.tracing.websocket`); handlers never mix it in themselves.
    Each method does its counting and chains to ``super()``; before the
    upgrade was answered (:attr:`divak_connection` is :data:`None`) they
    only chain.
    """

    #: The application's connections; set on each derived class.
    divak_connections: typing.ClassVar[WebSocketConnections]
    #: The connection's :class:`WebSocketConnection` once the upgrade was
    #: answered, else :data:`None`.
    divak_connection: WebSocketConnection | None = None

    def on_message(self, message: str | bytes) -> typing.Awaitable[None] | None:
        """Count the message and run ``super().on_message`` (in its span, if any).

        :param message: the message Tornado received
        :returns: what the handler's ``on_message`` returned
        """
        connection = self.divak_connection
        if connection is None:
            return super().on_message(message)
        return connection.received(super().on_message, message)

    def write_message(
        self, message: str | bytes | dict[str, typing.Any], binary: bool = False
    ) -> asyncio.Future[None]:
        """Send *message* with ``super().write_message``; count it once it is queued.

        :raises tornado.websocket.WebSocketClosedError: as Tornado does, for
            a closed connection (the message is not counted)
        """
        future = super().write_message(message, binary)
        connection = self.divak_connection
        if connection is not None:
            connection.sent()
        return future

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Remember the code this side closes with; chain to ``super().close``.

        :param code: the RFC 6455 close code, or :data:`None`
        :param reason: the reason text, or :data:`None`
        """
        connection = self.divak_connection
        if connection is not None and self.ws_connection is not None:
            connection.closing(code, reason)
        super().close(code, reason)


class WebSocketConnection:
    """The telemetry of one open WebSocket connection.

    Made by :meth:`WebSocketConnections.accept` when the upgrade was
    answered; the request's pipeline calls :meth:`ended` once the
    connection closed, before it ends the span.

    .. attribute:: messages_received

       Data messages received so far (:class:`int`).

    .. attribute:: messages_sent

       Data messages the handler sent so far (:class:`int`).

    .. attribute:: started

       :func:`time.monotonic` of the upgrade.
    """

    __slots__ = (
        "connections",
        "handler",
        "protocol",
        "request_context",
        "series",
        "started",
        "messages_received",
        "messages_sent",
        "message_spans",
        "sent_close",
        "sent_code",
    )

    def __init__(
        self,
        connections: WebSocketConnections,
        handler: WebSocketTracking,
        request_context: RequestContext,
    ) -> None:
        self.connections = connections
        self.handler = handler
        #: Tornado's protocol object (what :meth:`abort` closes).
        self.protocol = handler.ws_connection
        self.request_context = request_context
        metrics = connections.instrumentation.metrics
        self.series: WebSocketRoute = metrics.websocket_opened(request_context.route)
        self.started = time.monotonic()
        self.messages_received = 0
        self.messages_sent = 0
        self.message_spans = (
            connections.message_spans and request_context.span.is_recording()
        )
        self.sent_close = False
        self.sent_code: int | None = None

    # -- what the handler reports ------------------------------------------
    def received(
        self, on_message: _OnMessage, message: _Message
    ) -> typing.Awaitable[None] | None:
        """Count a received message and run ``on_message(message)``.

        With message spans on, it runs inside the message's span.

        :returns: what *on_message* returned (wrapped, with a span, so that
            the span lasts until its coroutine is done)
        """
        self.messages_received += 1
        self.series.received += 1
        if not self.message_spans:
            return on_message(message)
        return self._traced(on_message, message)

    def sent(self) -> None:
        """Count a sent message."""
        self.messages_sent += 1
        self.series.sent += 1

    def closing(self, code: int | None, reason: str | None) -> None:
        """This side sends a close frame with *code* (and *reason*)."""
        if not self.sent_close:
            self.sent_close = True
            # Tornado sends 1000 for a reason without a code.
            self.sent_code = 1000 if code is None and reason is not None else code

    # -- the end -----------------------------------------------------------
    @property
    def close_code(self) -> int:
        """The connection's close code (see :mod:`divak.tracing.websocket`)."""
        received = self.handler.close_code
        if received is not None:
            return received
        if self.sent_close:
            return self.sent_code if self.sent_code is not None else NO_STATUS_RECEIVED
        return ABNORMAL_CLOSURE

    def ended(self, request_context: RequestContext) -> None:
        """The connection closed: metrics, span attributes, the close line.

        Called by the request's pipeline when the handler's task is done,
        before it ends the span (which it still may mark).

        :param request_context: the request's context (the span, the
            exception type)
        """
        seconds = time.monotonic() - self.started
        close_code = self.close_code
        self.connections.remove(self)
        self.connections.instrumentation.metrics.websocket_closed(
            self.series, seconds, request_context.context
        )
        span = request_context.span
        if span.is_recording():
            span.set_attributes(
                {
                    "divak.websocket.messages_received": self.messages_received,
                    "divak.websocket.messages_sent": self.messages_sent,
                    "divak.websocket.close_code": close_code,
                }
            )
        with activated(request_context):
            access.log_websocket_close(
                self.handler,
                seconds,
                self.messages_received,
                self.messages_sent,
                close_code,
                failed=request_context.exception_type is not None,
            )
        self.handler.divak_connection = None

    def close(self, code: int, reason: str | None) -> None:
        """Send a close frame, unless the connection is closing already."""
        if self.handler.ws_connection is not None:
            self.handler.close(code, reason)

    def abort(self) -> None:
        """Close the connection's socket now, without a close handshake."""
        if self.protocol is not None:
            self.protocol.on_connection_close()

    # -- message spans -----------------------------------------------------
    def _traced(
        self, on_message: _OnMessage, message: _Message
    ) -> typing.Awaitable[None] | None:
        request_context = self.request_context
        route = request_context.route
        parent = request_context.current_context()
        span = self.connections.instrumentation.tracer.start_span(
            f"receive {route}" if route else "receive",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "divak.websocket.message.type": (
                    "binary" if isinstance(message, bytes) else "text"
                ),
                "divak.websocket.message.index": self.messages_received,
            },
        )
        context = trace.set_span_in_context(span, parent)
        token = otel_context.attach(context)
        try:
            result = on_message(message)
        except BaseException as error:
            _failed(span, error)
            span.end()
            raise
        finally:
            otel_context.detach(token)
        if result is None:
            span.end()
            return None
        return _finish_message(span, context, result)


async def _finish_message(
    span: trace.Span, context: otel_context.Context, result: typing.Awaitable[None]
) -> None:
    # Tornado runs the coroutine in a task of its own: the span is made
    # current there too, and ends when the coroutine is done.
    token = otel_context.attach(context)
    try:
        await result
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        otel_context.detach(token)
        span.end()


def _failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", semconv.exception_type(error))
    span.set_status(Status(StatusCode.ERROR))


class WebSocketConnections:
    """The WebSocket connections of one application, and their handler classes.

    Made by :class:`divak.Recorder` (:attr:`divak.Recorder.divak_websockets`).

    :param instrumentation: the application's instrumentation (tracer,
        metrics, settings)
    :raises ValueError: for an invalid
        ``settings['divak_websocket_message_spans']``

    .. attribute:: message_spans

       :data:`True` when received messages get spans of their own
       (:func:`message_spans_setting`).

    .. attribute:: closing

       ``(code, reason)`` once :meth:`close_all` was called, else
       :data:`None`.
    """

    def __init__(self, instrumentation: Instrumentation) -> None:
        self.instrumentation = instrumentation
        self.message_spans = message_spans_setting(instrumentation.settings)
        self.closing: tuple[int, str | None] | None = None
        self._open: dict[WebSocketConnection, None] = {}
        self._classes: dict[type, type] = {}
        self._all_closed: asyncio.Event | None = None

    def __len__(self) -> int:
        """The number of open connections."""
        return len(self._open)

    def __iter__(self) -> typing.Iterator[WebSocketConnection]:
        """The open connections, oldest first (a copy: they may close meanwhile)."""
        return iter(list(self._open))

    # -- handler classes ---------------------------------------------------
    def handler_class(
        self, target_class: type[web.RequestHandler]
    ) -> type[web.RequestHandler]:
        """The class that serves a request routed to *target_class*.

        *target_class* itself, unless it is a ``WebSocketHandler``: then a
        subclass that puts :class:`WebSocketTracking` in front, with the
        same name, qualified name, module and docstring, made once.

        :param target_class: the handler class Tornado routed the request to
        """
        served = self._classes.get(target_class)
        if served is None:
            served = target_class
            if issubclass(target_class, websocket.WebSocketHandler):
                served = self._derive(target_class)
            self._classes[target_class] = served
        return served

    def _derive(self, target_class: type[websocket.WebSocketHandler]) -> type:
        bases: tuple[type, ...] = (WebSocketTracking, target_class)
        if issubclass(target_class, WebSocketTracking):
            bases = (target_class,)
        namespace = {
            "__module__": target_class.__module__,
            "__qualname__": target_class.__qualname__,
            "__doc__": target_class.__doc__,
            "divak_connections": self,
        }
        return types.new_class(
            target_class.__name__, bases, exec_body=lambda ns: ns.update(namespace)
        )

    # -- open connections --------------------------------------------------
    def accept(
        self, handler: WebSocketTracking, request_context: RequestContext
    ) -> WebSocketConnection:
        """*handler* answered its upgrade: track the new connection.

        Counts it in ``divak.websocket.connections.active``.  After
        :meth:`close_all`, the connection is closed with the same code as
        soon as Tornado has set it up.

        :param handler: the handler that answered ``101``
        :param request_context: its request's context
        """
        connection = WebSocketConnection(self, handler, request_context)
        handler.divak_connection = connection
        self._open[connection] = None
        if self._all_closed is not None:
            self._all_closed.clear()
        if self.closing is not None:
            # Tornado detaches the stream after the 101: close afterwards.
            ioloop.IOLoop.current().add_callback(connection.close, *self.closing)
        return connection

    def remove(self, connection: WebSocketConnection) -> None:
        """*connection* closed: forget it."""
        self._open.pop(connection, None)
        if not self._open and self._all_closed is not None:
            self._all_closed.set()

    def close_all(self, code: int = GOING_AWAY, reason: str | None = None) -> int:
        """Send every open connection a close frame; close later ones at once.

        Each connection closes when its peer answers the close frame, or
        after Tornado's own wait for that answer (5 seconds); its span
        ends then.

        :param code: the RFC 6455 close code, default ``1001`` (going away)
        :param reason: the close reason text, or :data:`None`
        :returns: the number of connections told to close
        """
        self.closing = (code, reason)
        connections = list(self._open)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)

    def abort_all(self) -> int:
        """Close the socket of every open connection now, without a handshake.

        Their spans end once Tornado noticed (the next turns of the IOLoop).

        :returns: the number of connections cut off
        """
        connections = list(self._open)
        for connection in connections:
            connection.abort()
        return len(connections)

    async def wait_closed(self) -> None:
        """Return once no connection is open (their spans ended)."""
        if not self._open:
            return
        event = self._all_closed
        if event is None:
            event = self._all_closed = asyncio.Event()
        await event.wait()


def accepted(
    handler: web.RequestHandler, request_context: RequestContext
) -> WebSocketConnection | None:
    """The connection *handler* opened by answering ``101``, now tracked.

    :data:`None` for a handler that is not one of the classes
    :meth:`WebSocketConnections.handler_class` made (a ``101`` answered by
    something else).

    :param handler: the handler that answered ``101 Switching Protocols``
    :param request_context: its request's context
    """
    if not isinstance(handler, WebSocketTracking):
        return None
    return handler.divak_connections.accept(handler, request_context)
