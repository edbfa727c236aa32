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

from tornado import httpserver, httputil, iostream, netutil, web

__all__ = ["DrainingHTTPServer", "bind_sockets"]


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
        if self.server.draining and not _has_pending_request(
            getattr(self.request, "connection", None)
        ):
            headers["Connection"] = "close"
        return status_code, headers, chunk


def _has_pending_request(server_conn: typing.Any) -> bool:
    """Whether bytes of a next request already arrived on the connection.

    Such a request was sent before the drain started (pipelined behind the
    previous one, or not read yet): it is in-flight work, not new work.
    """
    stream = getattr(server_conn, "stream", None)
    if stream is None or stream.closed():
        return False
    # Private, and divak's only use of it: bytes IOStream already read from
    # the socket but nobody consumed yet (a pipelined request read together
    # with the previous one).  Tornado has no public way to ask;
    # tests/test_private_names.py fails loudly if it is renamed.
    if stream._read_buffer_size:
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
        if isinstance(self.request_callback, web.Application):
            self.request_callback.add_transform(_CloseWhileDraining(self))  # type: ignore[arg-type]
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
        for connection in list(self.connections - self.busy.keys()):
            if _has_pending_request(connection):
                self.busy[connection] = None
            else:
                self._close(connection)
        self._check_drained()


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
