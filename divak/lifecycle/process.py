"""Serving from several processes: fork the children, supervise them.

The parent binds the sockets, forks, and then only forwards SIGTERM/SIGINT
to its children, reaps them and restarts those that die unexpectedly; each
child builds its own application (and so its own tracer provider and
reporter threads) after the fork, and stops when its parent dies.

Also the process-wide preparation :func:`divak.run` and the
:class:`~divak.lifecycle.runner.Runner` make before serving:
:func:`raise_open_files_limit`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
import typing

from tornado import web

__all__ = [
    "EXIT_FORCED",
    "EXIT_START_FAILED",
    "MAX_RESTARTS",
    "STOP_SIGNALS",
    "Supervisor",
    "exit_with_parent",
    "flush_std_streams",
    "fork_and_serve",
    "raise_open_files_limit",
]

logger = logging.getLogger("divak.runner")

#: Exit status after a second SIGTERM/SIGINT cut the drain short.
EXIT_FORCED = 1
#: Exit status when the application could not start (``EX_SOFTWARE``,
#: as sprockets.http).
EXIT_START_FAILED = 70
#: Default of ``settings['max_restarts']`` (as
#: :func:`tornado.process.fork_processes`).
MAX_RESTARTS = 100

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1

ServeHere = typing.Callable[
    [typing.Callable[..., web.Application], dict[str, typing.Any], list[socket.socket]],
    tuple[int, bool],
]


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files (``RLIMIT_NOFILE``) to the hard limit.

    Every connection takes a file descriptor; the soft limit (often 1,024)
    is what a slow or hostile set of clients exhausts first, while the hard
    limit, which an unprivileged process may raise its soft limit to, is
    usually far higher.  An infinite hard limit (macOS) is tried as 10,240
    (``OPEN_MAX``).  Logs an INFO line when the limit changed, a WARNING
    when it could not be raised.

    :returns: the soft limit now in force
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    targets = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 10240]
    reason: Exception | None = None
    for target in targets:
        if target <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            reason = error
            continue
        logger.info("raised the open files limit from %d to %d", soft, target)
        return target
    logger.warning("cannot raise the open files limit from %d: %s", soft, reason)
    return soft


def exit_with_parent(parent_pid: int) -> None:
    """In a forked child: stop (SIGTERM, so a drain) when the parent dies.

    On Linux the kernel sends the signal (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere a daemon thread checks :func:`os.getppid` every second.  A
    parent that died before this call is noticed too.

    :param parent_pid: the process id of the parent that forked this one
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="divak-parent-watch", daemon=True).start()


def _describe_exit(code: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:  # pragma: no cover - a signal Python does not name
        name = f"signal {-code}"
    return f"was killed by {name}"


class Supervisor:
    """The parent of forked children: forwards stop signals, reaps, restarts.

    :param serve_child: what a child runs after the fork; returns the
        child's exit status
    :param number_of_procs: children to keep running
    :param max_restarts: children restarted at most, over the parent's life
    :param sockets: the listening sockets, closed once the parent stops
        (so that new connections are refused while the children drain)

    A child that exits while nobody asked it to (killed, crashed, or even
    with status 0) is restarted, as :func:`tornado.process.fork_processes`
    does, and every restart is logged; after *max_restarts* restarts, or
    when a child could not start its application (status 70, restarting
    would fail again), the parent stops the others and exits with that
    child's status (1 for a signal).  A child stops when the parent dies
    (:func:`exit_with_parent`).
    """

    def __init__(
        self,
        serve_child: typing.Callable[[], int],
        number_of_procs: int,
        max_restarts: int = MAX_RESTARTS,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        self.serve_child = serve_child
        self.number_of_procs = number_of_procs
        self.max_restarts = max_restarts
        self.sockets = sockets or []
        self.children: set[int] = set()
        self.restarts = 0
        self.stopping = False
        self.status = 0
        self.signals = 0
        self.parent = os.getpid()
        self._wakeup: tuple[int, int] | None = None
        self._handlers: dict[signal.Signals, typing.Any] = {}

    def run(self) -> int:
        """Fork the children and supervise them until all exited.

        Signals reach the parent through :func:`signal.set_wakeup_fd`, read
        outside any event loop (so forking again to restart a child is
        safe), whichever of the parent's threads the kernel delivers them
        to.  The stop signals and SIGCHLD stay blocked in each child until
        its runner's handlers are in place.

        :returns: the parent's exit status
        """
        handled = (*STOP_SIGNALS, signal.SIGCHLD)
        read_end, write_end = self._wakeup = os.pipe()
        os.set_blocking(write_end, False)
        previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, _noted) for signum in handled}
        self._handlers = previous
        previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        try:
            for _ in range(self.number_of_procs):
                self.children.add(self.fork())
            logger.info(
                "started %d children: %s",
                len(self.children),
                " ".join(map(str, sorted(self.children))),
            )
            self.on_child()  # children that exited already
            while self.children:
                for signum in os.read(read_end, 64):
                    if signum == signal.SIGCHLD:
                        self.on_child()
                    elif signum in STOP_SIGNALS:
                        self.on_signal(signum)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(read_end)
            os.close(write_end)
            self._wakeup = None
            self._close_sockets()
        return self.status

    def fork(self) -> int:
        """Fork a child that runs *serve_child* and exits; its process id."""
        handled = {*STOP_SIGNALS, signal.SIGCHLD}
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            return pid
        # The child: the parent's signal plumbing is not its own.
        status = 1
        try:
            if self._wakeup is not None:
                signal.set_wakeup_fd(-1)
                for fd in self._wakeup:
                    os.close(fd)
            for signum, handler in self._handlers.items():
                signal.signal(signum, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            exit_with_parent(self.parent)
            status = self.serve_child()
        except BaseException:  # pragma: no cover - last resort
            logger.exception("child failed")
        finally:
            logging.shutdown()
            flush_std_streams()
            os._exit(status)

    def on_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT to the parent: forward it to every child."""
        self.signals += 1
        if self.signals == 1:
            logger.info(
                "%s received, stopping %d children",
                signal.Signals(signum).name,
                len(self.children),
            )
        else:
            logger.warning("second %s, children exit now", signal.Signals(signum).name)
            self.status = EXIT_FORCED
        self._stop()
        self._forward(signum)

    def _stop(self) -> None:
        self.stopping = True
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self.sockets:  # the children still listen until they drain
            sock.close()
        self.sockets = []

    def _forward(self, signum: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # pragma: no cover - already gone
                pass

    def on_child(self) -> None:
        """Reap the children that exited; restart them or stop the others."""
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - nothing to reap
                break
            if pid == 0:
                break
            if pid not in self.children:  # pragma: no cover - not ours
                continue
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                if code == 0:
                    logger.info("child %d exited", pid)
                    continue
                logger.error("child %d %s", pid, _describe_exit(code))
                if self.status == 0:
                    self.status = code if code > 0 else 1
                continue
            if code != EXIT_START_FAILED and self.restarts < self.max_restarts:
                self.restarts += 1
                new = self.fork()
                self.children.add(new)
                logger.error(
                    "child %d %s, restarted as %d (restart %d of at most %d)",
                    pid,
                    _describe_exit(code),
                    new,
                    self.restarts,
                    self.max_restarts,
                )
                continue
            if code == EXIT_START_FAILED:
                logger.error("child %d %s, stopping", pid, _describe_exit(code))
            else:
                logger.error(
                    "child %d %s after %d restart(s), the most max_restarts "
                    "allows: stopping",
                    pid,
                    _describe_exit(code),
                    self.restarts,
                )
            self.status = code if code > 0 else 1
            self._stop()
            self._forward(signal.SIGTERM)


def _noted(signum: int, frame: typing.Any) -> None:
    """The parent's Python-level handler: the wakeup pipe carries the signal."""


def flush_std_streams() -> None:
    """Flush standard output and error, ignoring a closed or broken stream."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - closed or broken stream
            pass


def fork_and_serve(
    serve_here: ServeHere,
    create_application: typing.Callable[..., web.Application],
    app_settings: dict[str, typing.Any],
    sockets: list[socket.socket],
    number_of_procs: int,
    max_restarts: int = MAX_RESTARTS,
) -> int:
    """Fork the children, serve in each, supervise them; the parent's status.

    Each child calls *serve_here* and exits with the status it returns.
    The parent runs a :class:`Supervisor`.
    """

    def serve_child() -> int:
        return serve_here(create_application, app_settings, sockets)[0]

    status = Supervisor(serve_child, number_of_procs, max_restarts, sockets).run()
    logger.info("all children stopped, exiting with status %d", status)
    return status
