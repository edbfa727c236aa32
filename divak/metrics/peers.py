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
* every snapshot a child puts into an answer, its own scrapes' and the
  ones it hands to siblings alike, is first written to ``<pid>.json``
  (atomically), and so is its last one when it shuts down (it then removes
  its socket): a sibling that does not answer within the timeout (its
  IOLoop is blocked, or it died) is counted with the newest state it ever
  put into an answer, so the sums never go back;
* such a sibling is *stale*: the sums carry the gauge
  :data:`STALE_PROCESSES`, the number of siblings that did not answer the
  scrape and are counted with their last known state (0 when every
  sibling answered).

Each child keeps aggregating with its own OpenTelemetry SDK; nothing is
shared but these snapshots, read only when a scrape arrives.  Taking,
saving, reading and decoding snapshots runs on the metrics thread
(:meth:`~divak.metrics.ApplicationMetrics.run_off_loop`), never on the
IOLoop.
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

from divak.metrics.snapshot import Collectable, Snapshot, snapshot

__all__ = [
    "ENVIRONMENT_VARIABLE",
    "STALE_PROCESSES",
    "Peer",
    "gather",
    "join",
    "remove_stale_directories",
    "share",
    "shared_directory",
]

logger = logging.getLogger(__name__)

#: Names the directory sibling processes meet in.
ENVIRONMENT_VARIABLE = "DIVAK_METRICS_PEERS_DIR"
#: The gauge a sum over processes carries: how many siblings did not
#: answer and are counted with their last known state.
STALE_PROCESSES = "divak.metrics.stale_processes"

_T = typing.TypeVar("_T")


class Shared(Collectable, typing.Protocol):
    """What a :class:`Peer` serves: :class:`~divak.metrics.ApplicationMetrics`."""

    #: This process's endpoint, :data:`None` without siblings.
    peer: Peer | None

    def run_off_loop(
        self, function: typing.Callable[..., _T], *args: typing.Any
    ) -> typing.Awaitable[_T]:
        """Run ``function(*args)`` on the metrics thread."""


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

    def __init__(self, metrics: Shared, directory: str) -> None:
        self.metrics = metrics
        self.directory = directory
        self.pid = os.getpid()
        self.socket_path = os.path.join(directory, f"{self.pid}.sock")
        self.snapshot_path = os.path.join(directory, f"{self.pid}.json")
        # Snapshots are taken and saved in one step, one at a time: the
        # file never goes back to an older state than one handed out.
        self._lock = threading.Lock()
        self.server = _PeerServer(self)
        self.server.add_socket(netutil.bind_unix_socket(self.socket_path))

    def share(self) -> Snapshot:
        """The current snapshot, saved first for when this process does not answer.

        Blocks the calling thread (call it on the metrics thread).
        """
        with self._lock:
            current = snapshot(self.metrics)
            self._save(json.dumps(current).encode())
        return current

    def answer(self) -> bytes:
        """The current snapshot as JSON, also saved (see :meth:`share`)."""
        with self._lock:
            body = json.dumps(snapshot(self.metrics)).encode()
            self._save(body)
        return body

    def save_final(self) -> None:
        """Take the last snapshot; siblings read it from now on.

        Also removes the socket: a sibling that finds no socket counts this
        process with its final state, and not as stale.
        """
        with self._lock:
            final = snapshot(self.metrics)
            self.metrics.final_snapshot = final
            self._save(json.dumps(final).encode())
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)

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
            await stream.write(await self.peer.metrics.run_off_loop(self.peer.answer))
        except iostream.StreamClosedError:
            pass
        finally:
            stream.close()


def join(metrics: Shared) -> None:
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


def share(metrics: Shared) -> Snapshot:
    """This process's snapshot for an answer; saved first when it has siblings.

    Blocks the calling thread (call it on the metrics thread): whatever a
    scrape answers must be what siblings fall back on later.
    """
    peer = metrics.peer
    if peer is None:
        return snapshot(metrics)
    return peer.share()


async def gather(metrics: Shared, timeout: float = 2.0) -> list[Snapshot]:
    """The snapshots of every sibling process, read concurrently.

    Call it on the IOLoop; decoding runs on the metrics thread.

    :param metrics: this process's :class:`~divak.metrics.ApplicationMetrics`
    :param timeout: seconds to wait for a sibling before using the last
        snapshot it saved
    :returns: one snapshot per sibling that ever saved one, and one that
        holds the gauge :data:`STALE_PROCESSES`; empty when the process has
        no siblings
    """
    peer = metrics.peer
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
        *(_read(metrics, peer.directory, pid, timeout) for pid in sorted(pids))
    )
    stale = sum(1 for _, was_stale in found if was_stale)
    snapshots = [each for each, _ in found if each is not None]
    snapshots.append(_stale_gauge(stale))
    return snapshots


async def _read(
    metrics: Shared, directory: str, pid: int, timeout: float
) -> tuple[Snapshot | None, bool]:
    """A sibling's snapshot, and whether it is its last saved one (stale)."""
    path = os.path.join(directory, f"{pid}.sock")
    stale = False
    if os.path.exists(path):
        stream = iostream.IOStream(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            await asyncio.wait_for(stream.connect(path), timeout)
            data = await asyncio.wait_for(
                stream.read_until_close(), max(0.0, deadline - loop.time())
            )
            return await metrics.run_off_loop(_decode, data), False
        except (OSError, iostream.StreamClosedError, TimeoutError, ValueError):
            stale = True  # busy or gone: its last saved snapshot below
        finally:
            stream.close()
    saved = os.path.join(directory, f"{pid}.json")
    return await metrics.run_off_loop(_load, saved), stale


def _decode(data: bytes) -> Snapshot:
    return typing.cast(Snapshot, json.loads(data))


def _load(path: str) -> Snapshot | None:
    try:
        with open(path, "rb") as file:
            return _decode(file.read())
    except (OSError, ValueError):
        return None


def _stale_gauge(stale: int) -> Snapshot:
    return {
        STALE_PROCESSES: {
            "kind": "gauge",
            "description": "Sibling processes that did not answer the scrape,"
            " counted with their last known state.",
            "unit": "{process}",
            "points": {"[]": {"attributes": [], "value": stale}},
        }
    }
