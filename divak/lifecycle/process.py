"""Serving from several processes: fork the children, supervise them.

The parent binds the sockets, forks, and then only forwards SIGTERM/SIGINT
to its children and reaps them; each child builds its own application
(and so its own tracer provider and reporter threads) after the fork.

Also the process-wide preparation :func:`divak.run` and the
:class:`~divak.lifecycle.runner.Runner` make before serving:
:func:`raise_open_files_limit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import sys
import typing

from tornado import web

__all__ = [
    "EXIT_FORCED",
    "EXIT_START_FAILED",
    "STOP_SIGNALS",
    "Supervisor",
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

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

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


class Supervisor:
    """The parent of forked children: forwards stop signals, reaps children."""

    def __init__(self, children: set[int]) -> None:
        self.children = children
        self.stopping = False
        self.status = 0
        self.signals = 0
        self.all_gone = asyncio.Event()

    def on_signal(self, signum: int) -> None:
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
        self.stopping = True
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # pragma: no cover - already gone
                pass

    def on_child(self) -> None:
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
            if code == 0 and self.stopping:
                logger.info("child %d exited", pid)
                continue
            logger.error("child %d exited with status %d", pid, code)
            if not self.stopping:
                # Fail fast: the platform restarts the whole service.
                self.stopping = True
                self.status = code if code > 0 else 1
                self._forward(signal.SIGTERM)
            elif self.status == 0:
                self.status = code if code > 0 else 1
        if not self.children:
            self.all_gone.set()

    async def wait(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.on_signal, signum)
        loop.add_signal_handler(signal.SIGCHLD, self.on_child)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
        self.on_child()  # children that exited before the handler existed
        await self.all_gone.wait()
        return self.status


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
) -> int:
    """Fork the children, serve in each, supervise them; the parent's status."""
    blocked = {*STOP_SIGNALS, signal.SIGCHLD}
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    children: set[int] = set()
    for _ in range(number_of_procs):
        pid = os.fork()
        if pid == 0:  # the child: build everything here, never return
            status = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                status, _ = serve_here(create_application, app_settings, sockets)
            except BaseException:  # pragma: no cover - last resort
                logger.exception("child failed")
            finally:
                logging.shutdown()
                flush_std_streams()
                os._exit(status)
        children.add(pid)
    for sock in sockets:  # only the children listen now
        sock.close()
    logger.info(
        "started %d children: %s", len(children), " ".join(map(str, sorted(children)))
    )
    loop = asyncio.new_event_loop()
    try:
        status = loop.run_until_complete(Supervisor(children).wait())
    finally:
        loop.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    logger.info("all children stopped, exiting with status %d", status)
    return status
