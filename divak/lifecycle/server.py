"""The HTTP server :func:`divak.run` serves with: one that can drain.

:class:`DrainingHTTPServer` is a :class:`tornado.httpserver.HTTPServer`
that knows which connections are busy (a request arrived and its response
is not finished) and which are idle (keep-alive, waiting), so a drain can
refuse new connections, close idle ones at once, and wait only for the
requests in flight.

It also holds up under connections that never finish a request: request
headers must arrive within a deadline (:attr:`DrainingHTTPServer.header_timeout`),
and when the process runs out of file descriptors it stops accepting for
a moment instead of failing every accept (one log line per interval).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
import typing

from tornado import (
    http1connection,
    httpserver,
    httputil,
    ioloop,
    iostream,
    netutil,
    web,
)

from divak.logs.ratelimit import safe_log
from divak.tracing.recorder import Recorder

__all__ = ["DrainingHTTPServer", "bind_sockets"]

logger = logging.getLogger("divak.runner")

#: ``accept()`` failed for want of descriptors or memory: the connection
#: stays in the listen backlog, accepting again at once fails again.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Seconds between two log lines about the same kind of fault, at least.
REPORT_INTERVAL = 10.0


class _Tally:
    """Counts a repeating event; logs the count at most once per interval."""

    __slots__ = ("message", "level", "interval", "count", "last")

    def __init__(self, message: str, level: int, interval: float) -> None:
        self.message = message  # formatted with the count, then a detail
        self.level = level
        self.interval = interval
        self.count = 0
        self.last: float | None = None

    def add(self, count: int, detail: str) -> None:
        self.count += count
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        counted, self.count = self.count, 0
        safe_log(logger, self.level, self.message, counted, detail)


class _ActivityDelegate(httputil.HTTPMessageDelegate):
    """Marks a connection busy from request headers until its next request."""

    __slots__ = ("server", "connection", "request_conn", "delegate")

    def __init__(
        self,
        server: DrainingHTTPServer,
        connection: typing.Any,
        request_conn: httputil.HTTPConnection,
        delegate: httputil.HTTPMessageDelegate,
    ) -> None:
        self.server = server
        self.connection = connection
        self.request_conn = request_conn
        self.delegate = delegate

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> typing.Awaitable[None] | None:
        self.server.busy[self.connection] = None
        self.server.waiting.pop(self.connection, None)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> typing.Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


class _CloseWhileDraining(web.OutputTransform):
    """Answer ``Connection: close`` while the server drains.

    RFC 9112, section 9.6: the client learns that the connection closes
    after this response, and the server closes it once the response is
    sent (:meth:`DrainingHTTPServer.start_request`).  Not when the next
    request already arrived on the connection: that one is answered too.
    Not on a ``101 Switching Protocols`` either: the connection belongs to
    the new protocol, which the drain closes its own way (a
    :class:`divak.Recorder` application closes a WebSocket opened during
    the drain with code 1001 right after its handshake).
    """

    __slots__ = ("server", "request")

    def __init__(
        self,
        server: DrainingHTTPServer,
        request: httputil.HTTPServerRequest | None = None,
    ) -> None:
        self.server = server
        self.request = request

    def __call__(self, request: httputil.HTTPServerRequest) -> _CloseWhileDraining:
        return _CloseWhileDraining(self.server, request)

    def transform_first_chunk(
        self,
        status_code: int,
        headers: httputil.HTTPHeaders,
        chunk: bytes,
        finishing: bool,
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        request = self.request
        if (
            self.server.draining
            and status_code != 101  # a WebSocket handshake: closed with 1001 after
            and not (request is not None and _has_pending_request(request.connection))
        ):
            headers["Connection"] = "close"
        return status_code, headers, chunk


#: The connections whose stream :func:`_has_pending_request` can look into.
_HTTP1_CONNECTIONS = (
    http1connection.HTTP1ServerConnection,
    http1connection.HTTP1Connection,
)


def _has_pending_request(server_conn: object) -> bool:
    """Whether bytes of a next request already arrived on the connection.

    Such a request was sent before the drain started (pipelined behind the
    previous one, or not read yet): it is in-flight work, not new work.

    :param server_conn: an HTTP/1 connection, as the server holds it
        (:class:`~tornado.http1connection.HTTP1ServerConnection`) or as a
        request names it (:class:`~tornado.http1connection.HTTP1Connection`);
        anything else has none
    """
    if not isinstance(server_conn, _HTTP1_CONNECTIONS):
        return False
    stream = server_conn.stream
    if stream.closed():
        return False
    # Private, and divak's only use of it: bytes IOStream already read from
    # the socket but nobody consumed yet (a pipelined request read together
    # with the previous one).  Tornado has no public way to ask;
    # tests/test_private_names.py fails loudly if it is renamed.
    if stream._read_buffer_size:
        return True
    try:
        return bool(stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, ValueError):  # nothing there yet, or a TLS socket
        return False


class _InFlightRequests(web.OutputTransform):
    """Tells the server which request a busy connection carries.

    Tornado builds an application's output transforms with the request
    when its handler starts; this one only records the request (for
    :meth:`DrainingHTTPServer.in_flight_requests`) and changes no output.
    """

    __slots__ = ("server",)

    def __init__(self, server: DrainingHTTPServer) -> None:
        self.server = server

    def __call__(self, request: httputil.HTTPServerRequest) -> _InFlightRequests:
        busy = self.server.busy
        if request.server_connection in busy:
            busy[request.server_connection] = request
        return self


class DrainingHTTPServer(httpserver.HTTPServer):
    """An HTTPServer that knows which connections are idle and can drain.

    A connection is *busy* from the moment request headers arrive until the
    response is finished, or while the bytes of a request that arrived
    before the drain wait to be read; otherwise it is idle (a keep-alive
    connection waiting for its next request).

    Besides :class:`tornado.httpserver.HTTPServer`'s arguments it takes:

    :param header_timeout: seconds a request's headers may take, or
        :data:`None` for no limit.  A new connection must deliver the
        headers of its first request within that time of being accepted; a
        kept-alive connection those of its next request within that time
        of the request's first bytes (checked every ``header_timeout / 4``
        seconds, at most every second, so up to a second later).  A
        connection that misses the deadline is closed without an answer.
        Tornado's own ``idle_connection_timeout`` bounds the same read, but
        it also bounds how long an idle keep-alive connection is kept, so
        it cannot be short without closing connections a load balancer
        means to reuse.

    When ``accept()`` fails for want of file descriptors or memory
    (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``), the server stops
    accepting on that socket for a moment (0.05 s, doubling up to 1 s while
    it keeps failing) instead of retrying at once; the connections wait in
    the listen backlog, and one WARNING line per :data:`REPORT_INTERVAL`
    seconds says how many accepts failed.  Tornado logs a traceback for
    every failed accept instead, as often as the IOLoop turns.

    .. attribute:: header_timeouts

       Connections closed so far because their headers were late
       (:class:`int`).

    .. attribute:: accept_failures

       ``accept()`` calls that failed so far for want of resources
       (:class:`int`).
    """

    def initialize(  # type: ignore[override]
        self,
        *args: typing.Any,
        header_timeout: float | None = None,
        **kwargs: typing.Any,
    ) -> None:
        super().initialize(*args, **kwargs)
        application = self.request_callback
        #: Whether the application tells this server of each request and
        #: lets it adjust each response through its hooks (a
        #: :class:`divak.Recorder`): then no delegate and no output
        #: transform of the server's own are added to a request.
        self.hooked = isinstance(application, Recorder)
        if isinstance(application, Recorder):  # (narrows the type too)
            application.divak_request_hooks.append(self._request_arrived)
            application.divak_response_hooks.append(self._response_headers)
        elif isinstance(application, web.Application):
            application.add_transform(_CloseWhileDraining(self))  # type: ignore[arg-type]
            application.add_transform(_InFlightRequests(self))  # type: ignore[arg-type]
        self.connections: set[typing.Any] = set()
        self.busy: dict[typing.Any, httputil.HTTPServerRequest | None] = {}
        self.listening: list[socket.socket] = []
        self.draining = False
        self.drained = asyncio.Event()
        self.header_timeout = header_timeout if header_timeout else None
        # Connections waiting for request headers -> the IOLoop time the
        # headers are due from (None: kept alive, no byte of a next request).
        self.waiting: dict[typing.Any, float | None] = {}
        self._sweeper: ioloop.PeriodicCallback | None = None
        self._paused: dict[int, object] = {}
        self._backoff: dict[int, float] = {}
        self._accepting = False
        self.header_timeouts = 0
        self.accept_failures = 0
        self._late_headers = _Tally(
            "closed %d connection(s) whose request headers did not arrive "
            "within %s",
            logging.INFO,
            REPORT_INTERVAL,
        )
        self._failed_accepts = _Tally(
            "%d accept(s) failed: %s; new connections wait in the backlog "
            "until descriptors free up",
            logging.WARNING,
            REPORT_INTERVAL,
        )

    def in_flight_requests(self) -> list[httputil.HTTPServerRequest]:
        """The requests of busy connections.

        With a :class:`divak.Recorder` application, every request whose
        headers arrived; with another, those whose handler has started (a
        request whose body is still being read has none yet).  A busy
        connection whose request was received before a drain and not read
        yet has none either.
        """
        return [request for request in self.busy.values() if request is not None]

    def add_sockets(self, sockets: typing.Iterable[socket.socket]) -> None:
        """Accept connections on *sockets* from the current IOLoop.

        Like :meth:`tornado.tcpserver.TCPServer.add_sockets`, with the
        back-off on ``EMFILE`` described in the class, and the header
        deadline checked from then on.
        """
        sockets = list(sockets)
        self.listening.extend(sockets)
        self._accepting = True
        io_loop = ioloop.IOLoop.current()
        for sock in sockets:
            io_loop.add_handler(sock, self._on_acceptable, ioloop.IOLoop.READ)
        if self.header_timeout is not None and self._sweeper is None:
            period = min(1.0, self.header_timeout / 4)
            self._sweeper = ioloop.PeriodicCallback(
                self._close_late_connections, period * 1000
            )
            self._sweeper.start()

    def stop(self) -> None:
        """Stop accepting and close the listening sockets."""
        if self._accepting:
            self._accepting = False
            io_loop = ioloop.IOLoop.current()
            for sock in self.listening:
                handle = self._paused.pop(sock.fileno(), None)
                if handle is None:
                    io_loop.remove_handler(sock)
                else:
                    io_loop.remove_timeout(handle)
                sock.close()
        super().stop()

    async def close_all_connections(self) -> None:
        """Close every connection and wait for it; stop the header deadline."""
        if self._sweeper is not None:
            self._sweeper.stop()
        await super().close_all_connections()

    def _on_acceptable(self, sock: socket.socket, events: int) -> None:
        self._accept(sock, limit=128)

    def _accept(self, sock: socket.socket, limit: int | None) -> None:
        """Accept up to *limit* waiting connections (all with :data:`None`)."""
        accepted = 0
        while limit is None or accepted < limit:
            try:
                connection, address = sock.accept()
            except BlockingIOError:  # every waiting connection is accepted
                break
            except (ConnectionAbortedError, ConnectionResetError):
                continue  # gone before it was accepted
            except OSError as error:
                if not self._accepting or error.errno not in _OUT_OF_RESOURCES:
                    break  # closed; or an error of one connection
                self._pause(sock, error)
                break
            accepted += 1
            self._backoff.pop(sock.fileno(), None)
            self._serve(connection, address)

    def _pause(self, sock: socket.socket, error: OSError) -> None:
        """Stop accepting on *sock* for a moment: descriptors are out."""
        fileno = sock.fileno()
        delay = min(1.0, self._backoff.get(fileno, 0.025) * 2)
        self._backoff[fileno] = delay
        io_loop = ioloop.IOLoop.current()
        io_loop.remove_handler(sock)
        self._paused[fileno] = io_loop.call_later(delay, self._resume, sock)
        self.accept_failures += 1
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._failed_accepts.add(1, f"{error.strerror} (open files limit {soft})")

    def _resume(self, sock: socket.socket) -> None:
        self._paused.pop(sock.fileno(), None)
        if self._accepting:
            ioloop.IOLoop.current().add_handler(
                sock, self._on_acceptable, ioloop.IOLoop.READ
            )
            self._accept(sock, limit=128)

    def _serve(self, connection: socket.socket, address: typing.Any) -> None:
        """Serve an accepted connection (TLS when the server has ``ssl_options``)."""
        try:
            stream: iostream.IOStream
            if self.ssl_options is not None:
                connection = netutil.ssl_wrap_socket(
                    connection,
                    self.ssl_options,
                    server_side=True,
                    do_handshake_on_connect=False,
                )
                stream = iostream.SSLIOStream(
                    connection,
                    max_buffer_size=self.max_buffer_size,
                    read_chunk_size=self.read_chunk_size,
                )
            else:
                stream = iostream.IOStream(
                    connection,
                    max_buffer_size=self.max_buffer_size,
                    read_chunk_size=self.read_chunk_size,
                )
        except OSError:  # closed by the peer at once (a port scan)
            connection.close()
            return
        self.handle_stream(stream, address)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        if server_conn in self.connections:
            self.waiting[server_conn] = None
        else:  # a new connection: its first request's headers are due from now
            self.connections.add(server_conn)
            self.waiting[server_conn] = ioloop.IOLoop.current().time()
        self.busy.pop(server_conn, None)
        if self.draining:
            if _has_pending_request(server_conn):
                self.busy[server_conn] = None
            else:
                self._close(server_conn)
        delegate = super().start_request(server_conn, request_conn)
        if self.hooked:  # the application calls _request_arrived
            return delegate
        return _ActivityDelegate(self, server_conn, request_conn, delegate)

    def _request_arrived(self, request: httputil.HTTPServerRequest) -> None:
        # A hooked application's request hook: the headers of a request on
        # one of this server's connections arrived (what _ActivityDelegate
        # and _InFlightRequests note for another application).
        connection = request.server_connection
        if connection in self.connections:
            self.busy[connection] = request
            self.waiting.pop(connection, None)

    def _response_headers(
        self,
        request: httputil.HTTPServerRequest,
        status_code: int,
        headers: httputil.HTTPHeaders,
    ) -> None:
        # A hooked application's response hook: _CloseWhileDraining's work.
        if (
            self.draining
            and status_code != 101
            and request.server_connection in self.connections
            and not _has_pending_request(request.connection)
        ):
            headers["Connection"] = "close"

    def on_close(self, server_conn: object) -> None:
        self.connections.discard(server_conn)
        self.busy.pop(server_conn, None)
        self.waiting.pop(server_conn, None)
        self._check_drained()
        super().on_close(server_conn)

    def _close(self, server_conn: typing.Any) -> None:
        self.connections.discard(server_conn)
        self.busy.pop(server_conn, None)
        self.waiting.pop(server_conn, None)
        server_conn.stream.close()
        self._check_drained()

    def _close_late_connections(self) -> None:
        """Close connections whose request headers missed the deadline."""
        assert self.header_timeout is not None
        now = ioloop.IOLoop.current().time()
        waiting = self.waiting
        late = []
        for connection, since in list(waiting.items()):
            if since is None:
                if _has_buffered_bytes(connection):  # a next request began
                    waiting[connection] = now
            elif now - since >= self.header_timeout:
                late.append(connection)
        for connection in late:
            self._close(connection)
        if late:
            self.header_timeouts += len(late)
            self._late_headers.add(len(late), f"{self.header_timeout:g}s")

    def _check_drained(self) -> None:
        if self.draining and not self.busy:
            self.drained.set()

    def _accept_backlog(self) -> None:
        # Connections the kernel accepted but the server did not yet: serve
        # the requests that already arrived on them, close the others.
        for listening in self.listening:
            self._accept(listening, limit=None)

    def start_draining(self) -> int:
        """Stop accepting, close idle connections, signal when none is busy.

        Connections waiting in the listen backlog are accepted first, so
        requests that arrived before the drain are answered.  In-flight
        requests answer with ``Connection: close`` and their connections
        close after the response, unless a request pipelined behind them
        already arrived: that one is answered too.  A request whose headers
        only began to arrive counts as in flight until its header deadline.

        :returns: the number of idle connections closed
        """
        self.draining = True
        self._accept_backlog()
        self.stop()
        closed = 0
        for connection in list(self.connections - self.busy.keys()):
            if _has_pending_request(connection):
                self.busy[connection] = None
            else:
                self._close(connection)
                closed += 1
        self._check_drained()
        return closed


def _has_buffered_bytes(server_conn: typing.Any) -> bool:
    """Whether bytes of a request wait in the connection's read buffer.

    While Tornado waits for a request's headers it reads whatever arrives
    into the stream's buffer: bytes there are a request that began.
    """
    # Private, as in _has_pending_request (tests/test_runner.py checks it).
    return bool(server_conn.stream._read_buffer_size)


def bind_sockets(
    port: int, address: str | None, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets for *port* on *address* (all interfaces when :data:`None`).

    Tornado's :func:`~tornado.netutil.bind_sockets`, which sets
    ``SO_REUSEADDR``, so a restart never hits "address in use".

    :param reuse_port: set ``SO_REUSEPORT`` (forked children share a port)
    :raises OSError: when the port cannot be bound
    """
    return netutil.bind_sockets(port, address=address, reuse_port=reuse_port)
