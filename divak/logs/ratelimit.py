"""Faults that repeat, reported without flooding the log.

A dead collector or a broken reporter or propagator fails the same way for
every batch or request.  :class:`RateLimitedLog` turns that into a line or
two a minute; :func:`safe_log` makes sure that logging itself (a filter or
handler that raises) never stops the code that reports the fault;
:func:`describe_error` says what went wrong on one line.
"""

from __future__ import annotations

import logging
import threading
import time
import typing

__all__ = ["RateLimitedLog", "describe_error", "safe_log"]


def describe_error(error: BaseException) -> str:
    """One line that says what went wrong, without a traceback."""
    # requests nests the urllib3 error, which nests the socket error: keep
    # the innermost reason, on one line.
    reason: BaseException = error
    while reason.args and isinstance(reason.args[0], BaseException):
        reason = reason.args[0]
    reason = getattr(reason, "reason", reason) or reason
    return " ".join(f"{type(reason).__name__}: {reason}".split())


def safe_log(
    log: logging.Logger,
    level: int,
    message: str,
    *args: typing.Any,
    exc_info: bool = False,
) -> None:
    """Log ``message % args`` at *level*; never raise.

    A logging filter or handler that raises loses the line instead of
    breaking the caller (the export thread, a request).

    :param log: the logger
    :param level: e.g. :data:`logging.WARNING`
    :param message: a ``%``-format string
    :param exc_info: whether to add the exception being handled
    """
    try:
        log.log(level, message, *args, exc_info=exc_info or None)
    except Exception:  # noqa: BLE001, S110 - nowhere left to report it
        pass


class RateLimitedLog:
    """One log line per *interval* seconds at most, with a count of the rest.

    For faults that repeat for every batch or request (a dead collector, a
    broken reporter or propagator): the first occurrence is logged, the
    next ones within *interval* seconds are only counted, and the next line
    logged says how many were suppressed.  Thread-safe; a logging filter or
    handler that raises is survived (the line is lost).

    .. attribute:: suppressed

       Lines not logged since the last one (:class:`int`).
    """

    def __init__(self, log: logging.Logger, interval: float = 30.0) -> None:
        """Write to *log*, one line per *interval* at most.

        :param log: the logger to write to
        :param interval: seconds between two lines, at least (the default
            allows two lines a minute)
        """
        self.log = log
        self.interval = interval
        self.suppressed = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(
        self, level: int, message: str, *args: typing.Any, exc_info: bool = False
    ) -> bool:
        """Log ``message % args`` at *level* unless a line went out recently.

        :param level: e.g. :data:`logging.WARNING`
        :param message: a ``%``-format string
        :param exc_info: whether to add the exception being handled
        :returns: whether the line was written
        """
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                self.suppressed += 1
                return False
            self._last = now
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            message += " (%d more like this since the last line)"
            args = (*args, suppressed)
        safe_log(self.log, level, message, *args, exc_info=exc_info)
        return True
