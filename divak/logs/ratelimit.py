"""Faults that repeat, reported without flooding the log.

A dead collector or a broken reporter or propagator fails the same way for
every batch or request.  :class:`RateLimitedLog` turns that into a line or
two a minute; :func:`describe_error` says what went wrong on one line;
:func:`muffled` keeps a library's own line per failure out of the log while
divak reports the failure its way.

Logging itself may fail too: a filter, a formatter or a handler that
raises.  The standard library lets an exception raised by a *filter*
propagate out of the logging call (out of :meth:`logging.Logger.handle`),
so a broken filter turns every logging call into an exception in the
caller; an exception raised by a handler's ``emit`` or formatter goes to
:meth:`logging.Handler.handleError`, which prints a traceback on standard
error for every record.  Two tools keep such failures from hurting
requests and from flooding the output:

* :func:`safe_log`, through which divak writes its records on the request
  path (the handlers' ``logger``, the error lines) and in its threads: a
  logging call that raises loses its record, never the caller;
* :class:`FailSafeHandler`, the handler mix-in of the handler that
  :func:`divak.logs.ids.default_logging_config` configures: a filter,
  formatter or stream that raises loses the record on that handler.

Both report the failure through :data:`LOGGING_FAILURES`: on standard
error (where the standard library reports logging's own failures), one
line per interval at most, with a count.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
import typing

from divak.logs.formatters import escape_controls

__all__ = [
    "LOGGING_FAILURES",
    "FailSafeHandler",
    "LoggingFailures",
    "Muffled",
    "RateLimitedLog",
    "StreamHandler",
    "describe_error",
    "muffled",
    "safe_log",
]


def describe_error(error: BaseException) -> str:
    """One line that says what went wrong, without a traceback.

    The innermost reason of an error that wraps another: as its first
    argument (:class:`urllib.error.URLError`, requests' errors) or as its
    explicit cause (``raise ... from``, as urllib3 wraps the socket error).
    E.g. ``ConnectionRefusedError: [Errno 111] Connection refused``.
    """
    reason: BaseException = error
    seen = {id(reason)}
    while True:
        if reason.args and isinstance(reason.args[0], BaseException):
            inner = reason.args[0]
        elif reason.__cause__ is not None:
            inner = reason.__cause__
        else:
            break
        if id(inner) in seen:  # a cycle
            break
        seen.add(id(inner))
        reason = inner
    return " ".join(f"{type(reason).__name__}: {reason}".split())


class LoggingFailures:
    """Failures of logging itself: counted, reported one line per interval.

    Logging cannot be trusted to report its own failure, so the report is
    written to :data:`sys.stderr`, as :meth:`logging.Handler.handleError`
    does, but as one line instead of a traceback per record, at most one
    line per *interval* seconds; the next line says how many failures it
    did not report.  Nothing is written while :data:`logging.raiseExceptions`
    is false (the standard library's switch for logging's error reports);
    failures are counted all the same.  Thread-safe; writing the report
    never raises.

    divak has one, :data:`LOGGING_FAILURES`.

    .. attribute:: count

       Failures since the process started (:class:`int`).

    .. attribute:: suppressed

       Failures not reported since the last line (:class:`int`).
    """

    def __init__(self, interval: float = 30.0) -> None:
        """Report one failure per *interval* seconds at most.

        :param interval: seconds between two lines, at least
        """
        self.interval = interval
        self.count = 0
        self.suppressed = 0
        self._last: float | None = None
        self._lock = threading.Lock()

    def report(self, logger_name: str, error: BaseException | None) -> bool:
        """Count a lost record; write a line unless one went out recently.

        The line names the logger of the lost record and the error, e.g.
        (on one line)::

            --- Logging error: a record of 'tornado.access' was lost:
            RuntimeError: boom (41 more since the last report) ---

        :param logger_name: the name of the logger the record was written to
        :param error: what the filter, formatter or handler raised
        :returns: whether a line was written
        """
        now = time.monotonic()
        with self._lock:
            self.count += 1
            if self._last is not None and now - self._last < self.interval:
                self.suppressed += 1
                return False
            self._last = now
            suppressed, self.suppressed = self.suppressed, 0
        stream = sys.stderr
        if not logging.raiseExceptions or stream is None:
            return False
        what = describe_error(error) if error is not None else "unknown error"
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        line = escape_controls(
            f"--- Logging error: a record of {logger_name!r} was lost: {what}{more} ---"
        )
        try:
            stream.write(line + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - nowhere left to report it
            return False
        return True


#: The process's one :class:`LoggingFailures`, used by :func:`safe_log` and
#: :class:`FailSafeHandler` (30 s between two lines).
LOGGING_FAILURES = LoggingFailures()


def _name(log: logging.Logger | logging.LoggerAdapter[typing.Any]) -> str:
    if isinstance(log, logging.LoggerAdapter):
        return _name(log.logger)
    return log.name


def safe_log(
    log: logging.Logger | logging.LoggerAdapter[typing.Any],
    level: int,
    message: str,
    *args: typing.Any,
    **kwargs: typing.Any,
) -> None:
    """Log ``message % args`` at *level*; never raise.

    A logging filter, formatter or handler that raises loses the record
    instead of breaking the caller (a request, the export thread); the
    failure is reported by :data:`LOGGING_FAILURES`.

    :param log: the logger, or a :class:`logging.LoggerAdapter`
    :param level: e.g. :data:`logging.WARNING`
    :param message: a ``%``-format string
    :param kwargs: the keyword arguments of :meth:`logging.Logger.log`:
        ``exc_info`` (a true value adds the exception being handled, or
        give the exception or its :func:`sys.exc_info` tuple), ``extra``,
        ``stack_info``, ``stacklevel``
    """
    if not kwargs.get("exc_info"):
        kwargs.pop("exc_info", None)
    # The record's funcName and lineno are those of the caller.
    kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
    try:
        log.log(level, message, *args, **kwargs)
    except Exception as error:  # noqa: BLE001 - logging must not hurt the caller
        LOGGING_FAILURES.report(_name(log), error)


class FailSafeHandler:
    """Handler mix-in: a filter, formatter or stream that raises loses the record.

    To use it, mix it into a :class:`logging.Handler` subclass, before the
    handler class in the bases (:class:`StreamHandler` is
    ``FailSafeHandler, logging.StreamHandler``).  It overrides the two
    documented methods where a handler meets an exception:

    * :meth:`filter`: an exception raised by a filter added to the handler
      drops the record on this handler instead of propagating out of the
      logging call into the code that logged;
    * :meth:`handleError`: called by ``emit`` when formatting or writing
      fails; instead of a traceback per record on standard error, the
      failure is reported by :data:`LOGGING_FAILURES`, one line per
      interval at most.
    """

    def filter(self, record: logging.LogRecord) -> typing.Any:
        """Apply the handler's filters; a filter that raises drops the record.

        :param record: the record being handled
        :returns: what :meth:`logging.Filterer.filter` returns, or
            :data:`False` when a filter raised
        """
        try:
            return super().filter(record)  # type: ignore[misc]
        except Exception as error:  # noqa: BLE001 - a broken filter drops the record
            LOGGING_FAILURES.report(record.name, error)
            return False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        """Report the exception being handled by ``emit``, rate-limited.

        :param record: the record that could not be written
        """
        LOGGING_FAILURES.report(record.name, sys.exc_info()[1])


class StreamHandler(FailSafeHandler, logging.StreamHandler):  # type: ignore[type-arg]
    """A :class:`logging.StreamHandler` with :class:`FailSafeHandler` mixed in.

    The handler :func:`divak.logs.ids.default_logging_config` configures;
    arguments are those of :class:`logging.StreamHandler`.
    """


class Muffled:
    """What :func:`muffled` kept of the records it kept out of the log.

    .. attribute:: first

       The first muffled record's message on one line (whitespace runs
       collapsed, at most 300 characters), or ``""``.

    .. attribute:: last

       The last one's, the same way.

    .. attribute:: count

       Records muffled (:class:`int`).
    """

    __slots__ = ("count", "first", "last")

    def __init__(self) -> None:
        self.first = self.last = ""
        self.count = 0

    @property
    def message(self) -> str:
        """The first message, and the last when it differs, or ``""``."""
        if self.last == self.first:
            return self.first
        return f"{self.first}; then: {self.last}"


_muffling: contextvars.ContextVar[Muffled | None] = contextvars.ContextVar(
    "divak_muffled", default=None
)


class _Muffler(logging.Filter):
    """Drop, and keep the message of, records written inside :func:`muffled`."""

    def filter(self, record: logging.LogRecord) -> bool:
        muffle = _muffling.get()
        if muffle is None:
            return True
        muffle.count += 1
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad record is still muffled
            message = str(record.msg)
        muffle.last = " ".join(message.split())[:300]
        if muffle.count == 1:
            muffle.first = muffle.last
        return False


_MUFFLER = _Muffler()
_muffler_lock = threading.Lock()


@contextlib.contextmanager
def muffled(logger_name: str) -> typing.Iterator[Muffled]:
    """Keep the records of logger *logger_name* out of the log in the block.

    For a library that logs a line (or several) for every failure it
    returns, where divak counts the failures and reports them rate-limited
    (:class:`RateLimitedLog`): the library's records written in the block,
    on the same thread (or asyncio task), are dropped and the last one's
    message is kept, to be said in divak's line.  Records written
    elsewhere pass as before.  A :class:`logging.Filter` is added to the
    logger the first time.

    :param logger_name: the library's logger, e.g. ``__name__`` of the
        module that logs
    :returns: a context manager giving a :class:`Muffled`
    """
    log = logging.getLogger(logger_name)
    if _MUFFLER not in log.filters:
        with _muffler_lock:
            if _MUFFLER not in log.filters:
                log.addFilter(_MUFFLER)
    muffle = Muffled()
    token = _muffling.set(muffle)
    try:
        yield muffle
    finally:
        _muffling.reset(token)


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
        # The record's funcName and lineno are those of the code that
        # reports the fault.
        safe_log(self.log, level, message, *args, exc_info=exc_info, stacklevel=2)
        return True
