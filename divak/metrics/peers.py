"""Metrics of sibling processes: a scrape answers the sum over all of them.

With ``number_of_procs`` > 1 the children share the listening socket
(``SO_REUSEPORT``), so successive scrapes reach different children.  If
each child answered its own counts, counters would jump back and forth
between scrapes.  Instead, whichever child a scrape reaches asks every
sibling for its current cumulative state and answers the sum:

* before forking, the parent creates a private directory
  (:func:`shared_directory`) and names it in the environment variable
  :data:`ENVIRONMENT_VARIABLE`, which the children inherit;
* each child's :class:`~divak.metrics.ApplicationMetrics` listens on a
  Unix socket ``<pid>.sock`` in it, on the child's IOLoop; connecting to
  it returns the child's snapshot as JSON (see
  :func:`divak.metrics.snapshot.snapshot`);
* every snapshot a child hands out is also written to ``<pid>.json``
  (atomically), and so is its last one when it shuts down: a sibling that
  does not answer within the timeout (busy, or gone) is counted with the
  newest state it ever handed out, so the sums never go back.

Each child keeps aggregating with its own OpenTelemetry SDK; nothing is
shared but these snapshots, read only when a scrape arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import typing

from tornado import iostream, netutil, tcpserver

from divak.metrics.snapshot import snapshot

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "Peer",
    "gather",
    "join",
    "remove_stale_directories",
    "shared_directory",
]

logger = logging.getLogger(__name__)

#: Names the directory sibling processes meet in.
ENVIRONMENT_VARIABLE = "DIVAK_METRICS_PEERS_DIR"


@contextlib.contextmanager
def shared_directory() -> typing.Iterator[str]:
    """In the parent, around forking: create the meeting directory.

    Sets :data:`ENVIRONMENT_VARIABLE` for the ``with`` block (children
    forked inside inherit it), then restores the environment and removes
    the directory.  A lock on the directory's ``.lock`` file is held for
    the block, and by the children forked in it (they share the open
    file), so :func:`remove_stale_directories` leaves it alone.

    :returns: the directory's path
    """
    directory = tempfile.mkdtemp(prefix=_PREFIX)
    # Locked before it gets its name: a lock file is never seen unlocked.
    lock = os.open(os.path.join(directory, ".lock.new"), os.O_WRONLY | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(os.path.join(directory, ".lock.new"), os.path.join(directory, ".lock"))
    previous = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ENVIRONMENT_VARIABLE] = previous
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


_PREFIX = "divak-metrics-"


def remove_stale_directories() -> list[str]:
    """Remove the meeting directories no process uses any more.

    A run whose parent was killed (SIGKILL) could not remove its
    directory; once its children are gone too, nobody holds the
    directory's lock.  Directories of other users, of runs still alive
    and of runs still creating theirs are left alone.

    :returns: the paths removed
    """
    base = tempfile.gettempdir()
    try:
        names = [name for name in os.listdir(base) if name.startswith(_PREFIX)]
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(base, name)
        try:
            lock = os.open(os.path.join(path, ".lock"), os.O_RDONLY)
        except OSError:  # another user's, being created, or gone
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # in use
            os.close(lock)
            continue
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)
        removed.append(path)
    return removed


class Peer:
    """This process's endpoint in the meeting directory.

    :param metrics: the :class:`~divak.metrics.ApplicationMetrics` it serves
    :param directory: the meeting directory
    :raises OSError: when the Unix socket cannot be bound
    """

    def __init__(self, metrics: typing.Any, directory: str) -> None:
        self.metrics = metrics
        self.directory = directory
        self.pid = os.getpid()
        self.socket_path = os.path.join(directory, f"{self.pid}.sock")
        self.snapshot_path = os.path.join(directory, f"{self.pid}.json")
        self.server = _PeerServer(self)
        self.server.add_socket(netutil.bind_unix_socket(self.socket_path))

    def answer(self) -> bytes:
        """The current snapshot as JSON, also saved for when this process is gone."""
        body = json.dumps(snapshot(self.metrics)).encode()
        self._save(body)
        return body

    def save_final(self) -> None:
        """Take the last snapshot; siblings read it from now on."""
        final = snapshot(self.metrics)
        self.metrics.final_snapshot = final
        self._save(json.dumps(final).encode())

    def _save(self, body: bytes) -> None:
        temporary = f"{self.snapshot_path}.{threading.get_ident()}.tmp"
        try:
            with open(temporary, "wb") as file:
                file.write(body)
            os.replace(temporary, self.snapshot_path)
        except OSError as error:  # the directory was removed: shutting down
            logger.debug("cannot save the metrics snapshot: %s", error)


class _PeerServer(tcpserver.TCPServer):
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    async def handle_stream(
        self, stream: iostream.IOStream, address: typing.Any
    ) -> None:
        try:
            await stream.write(self.peer.answer())
        except iostream.StreamClosedError:
            pass
        finally:
            stream.close()


def join(metrics: typing.Any) -> None:
    """Start answering siblings, when this process has any.

    Does nothing unless :data:`ENVIRONMENT_VARIABLE` names an existing
    directory.  Call it on the IOLoop's thread (the socket is served by the
    current IOLoop).
    """
    directory = os.environ.get(ENVIRONMENT_VARIABLE)
    if not directory or not os.path.isdir(directory):
        return
    try:
        metrics.peer = Peer(metrics, directory)
    except OSError as error:
        logger.warning("metrics are not summed over processes: %s", error)


async def gather(
    metrics: typing.Any, timeout: float = 2.0
) -> list[dict[str, typing.Any]]:
    """The snapshots of every sibling process, read concurrently.

    :param metrics: this process's :class:`~divak.metrics.ApplicationMetrics`
    :param timeout: seconds to wait for a sibling before using the last
        snapshot it saved
    :returns: one snapshot per sibling that ever recorded metrics; empty
        when the process has no siblings
    """
    peer: Peer | None = metrics.peer
    if peer is None:
        return []
    try:
        names = os.listdir(peer.directory)
    except OSError:
        return []
    pids = set()
    for name in names:
        stem, _, extension = name.partition(".")
        if extension in ("sock", "json") and stem.isdigit():
            pids.add(int(stem))
    pids.discard(peer.pid)
    found = await asyncio.gather(
        *(_read(peer.directory, pid, timeout) for pid in sorted(pids))
    )
    return [each for each in found if each is not None]


async def _read(
    directory: str, pid: int, timeout: float
) -> dict[str, typing.Any] | None:
    path = os.path.join(directory, f"{pid}.sock")
    if os.path.exists(path):
        stream = iostream.IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            await asyncio.wait_for(stream.connect(path), timeout)
            data = await asyncio.wait_for(
                stream.read_until_close(), max(0.0, deadline - loop.time())
            )
            return typing.cast(dict[str, typing.Any], json.loads(data))
        except (OSError, iostream.StreamClosedError, TimeoutError, ValueError):
            pass  # busy or gone: its last saved snapshot below
        finally:
            stream.close()
    try:
        with open(os.path.join(directory, f"{pid}.json"), "rb") as file:
            return typing.cast(dict[str, typing.Any], json.loads(file.read()))
    except (OSError, ValueError):
        return None
