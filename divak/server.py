"""The HTTP server :func:`divak.run` serves with: one that can drain.

:class:`DrainingHTTPServer` is a :class:`tornado.httpserver.HTTPServer`
that knows which connections are busy (a request arrived and its response
is not finished) and which are idle (keep-alive, waiting), so a drain can
refuse new connections, close idle ones at once, and wait only for the
requests in flight.
"""

from __future__ import annotations

import asyncio
import socket
import typing

from tornado import httpserver, httputil, iostream

__all__ = ["DrainingHTTPServer"]


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
        self.server.busy[self.connection] = self.request_conn
        if self.server.draining and not _has_pending_request(self.connection):
            _close_after_response(self.request_conn)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> typing.Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()


def _close_after_response(request_conn: httputil.HTTPConnection | None) -> None:
    # Tornado's HTTP1Connection answers with "Connection: close" and closes
    # the connection after the response when this flag is set; it is the
    # flag Tornado itself sets for clients that do not keep connections.
    if request_conn is not None and hasattr(request_conn, "_disconnect_on_finish"):
        request_conn._disconnect_on_finish = True


def _has_pending_request(server_conn: typing.Any) -> bool:
    """Whether bytes of a next request already arrived on the connection.

    Such a request was sent before the drain started (pipelined behind the
    previous one, or not read yet): it is in-flight work, not new work.
    """
    stream = getattr(server_conn, "stream", None)
    if stream is None or stream.closed():
        return False
    if getattr(stream, "_read_buffer_size", 0):
        return True
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (OSError, ValueError):  # nothing there yet, or a TLS socket
        return False


class DrainingHTTPServer(httpserver.HTTPServer):
    """An HTTPServer that knows which connections are idle and can drain.

    A connection is *busy* from the moment request headers arrive until the
    response is finished, or while the bytes of a request that arrived
    before the drain wait to be read; otherwise it is idle (a keep-alive
    connection waiting for its next request).
    """

    def initialize(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        super().initialize(*args, **kwargs)
        self.connections: set[typing.Any] = set()
        self.busy: dict[typing.Any, httputil.HTTPConnection | None] = {}
        self.listening: list[socket.socket] = []
        self.draining = False
        self.drained = asyncio.Event()

    def add_sockets(self, sockets: typing.Iterable[socket.socket]) -> None:
        sockets = list(sockets)
        self.listening.extend(sockets)
        super().add_sockets(sockets)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        self.connections.add(server_conn)
        self.busy.pop(server_conn, None)
        if self.draining:
            if _has_pending_request(server_conn):
                self.busy[server_conn] = None
            else:
                self._close(server_conn)
        delegate = super().start_request(server_conn, request_conn)
        return _ActivityDelegate(self, server_conn, request_conn, delegate)

    def on_close(self, server_conn: object) -> None:
        self.connections.discard(server_conn)
        self.busy.pop(server_conn, None)
        self._check_drained()
        super().on_close(server_conn)

    def _close(self, server_conn: typing.Any) -> None:
        self.connections.discard(server_conn)
        self.busy.pop(server_conn, None)
        server_conn.stream.close()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self.busy:
            self.drained.set()

    def _accept_backlog(self) -> None:
        # Connections the kernel accepted but the server did not yet: serve
        # the requests that already arrived on them, close the others.
        if self.ssl_options is not None:
            return
        for listening in self.listening:
            while True:
                try:
                    connection, address = listening.accept()
                except OSError:  # empty backlog (EAGAIN) or closed
                    break
                stream = iostream.IOStream(
                    connection,
                    max_buffer_size=self.max_buffer_size,
                    read_chunk_size=self.read_chunk_size,
                )
                self.handle_stream(stream, address)

    def start_draining(self) -> None:
        """Stop accepting, close idle connections, signal when none is busy.

        Connections waiting in the listen backlog are accepted first, so
        requests that arrived before the drain are answered.  In-flight
        requests answer with ``Connection: close`` and their connections
        close after the response, unless a request pipelined behind them
        already arrived: that one is answered too.
        """
        self.draining = True
        self._accept_backlog()
        self.stop()
        for connection, request_conn in self.busy.items():
            if not _has_pending_request(connection):
                _close_after_response(request_conn)
        for connection in list(self.connections - self.busy.keys()):
            if _has_pending_request(connection):
                self.busy[connection] = None
            else:
                self._close(connection)
        self._check_drained()
