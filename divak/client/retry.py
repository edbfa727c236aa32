"""When an outgoing request is tried again: :class:`RetryPolicy`.

One call of :meth:`divak.HttpClientMixin.send_request` makes attempts until
one gets an answer worth returning, retrying cannot help, or the call's
time runs out.  The policy holds the rules (which failures and which
methods are retried, how long to wait before the next attempt) and the
call's clock (how long each attempt may take before the deadline); it sends
nothing.  All times are in seconds.
"""

from __future__ import annotations

import email.utils
import random
import time

from tornado import httpclient

from divak.semconv import RETRY_STATUSES

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "MIN_ATTEMPT_TIME",
    "RETRY_STATUSES",
    "RetryPolicy",
]

#: Seconds one attempt may take (connecting included).
DEFAULT_TIMEOUT = 10.0
#: Attempts after the first one.
DEFAULT_RETRIES = 3
#: Seconds the whole call may take, attempts and waits between them included.
DEFAULT_DEADLINE = 30.0
#: Upper bound of the first backoff, in seconds; it doubles per retry.
BACKOFF_BASE = 0.1
#: Longest backoff between two attempts, in seconds.
BACKOFF_MAX = 5.0
#: Seconds an attempt needs at least: no retry starts with less time left
#: before the deadline (it could only time out).
MIN_ATTEMPT_TIME = 0.1

#: Methods retried without being asked (RFC 9110, section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class RetryPolicy:
    """The retry rules and the clock of one call; its clock starts when it is made.

    Retried are connection errors (:class:`OSError`), timeouts and closed
    connections (:class:`tornado.httpclient.HTTPClientError` with code
    599), and the statuses in :data:`divak.semconv.RETRY_STATUSES` (429,
    502, 503, 504), when the method is in :data:`IDEMPOTENT_METHODS` or
    *retry_non_idempotent* is true, at most
    *retries* times.  The wait before a retry is the answer's
    ``Retry-After`` (RFC 9110, section 10.2.3: seconds or an HTTP date), or
    else exponential backoff with full jitter: a random wait up to
    :data:`BACKOFF_BASE` before the first retry, the bound doubling per
    retry up to :data:`BACKOFF_MAX`.  No retry starts when, after the wait,
    less than *min_attempt_time* (or *timeout*, if shorter) would be left
    before the deadline.

    :param method: the request's method, upper case
    :param timeout: seconds one attempt may take
    :param retries: attempts after the first one (0: no retry)
    :param deadline: seconds the whole call may take, from now
    :param min_attempt_time: seconds a retry needs at least
    :param retry_non_idempotent: retry any method, POST and PATCH too
    """

    __slots__ = (
        "timeout",
        "retries",
        "deadline",
        "min_attempt_time",
        "may_retry",
        "started",
    )

    def __init__(
        self,
        method: str,
        *,
        timeout: float,
        retries: int,
        deadline: float,
        min_attempt_time: float,
        retry_non_idempotent: bool,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.min_attempt_time = min_attempt_time
        self.may_retry = method in IDEMPOTENT_METHODS or retry_non_idempotent
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self.started

    def attempt_timeout(self) -> float:
        """Seconds the next attempt may take: *timeout*, cut to the time
        left before the deadline (1 ms at least)."""
        return max(min(self.timeout, self.deadline - self.elapsed()), 0.001)

    def cut_short(self, attempt_timeout: float) -> bool:
        """Whether the deadline, not the server, ended an attempt that failed.

        True when the attempt was given less than *timeout* because of the
        deadline, and the deadline has passed.

        :param attempt_timeout: the seconds the attempt was given
            (:meth:`attempt_timeout` when it started)
        """
        return attempt_timeout < self.timeout and self.elapsed() >= self.deadline

    def delay(
        self,
        attempt: int,
        response: httpclient.HTTPResponse | None,
        error: BaseException | None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or :data:`None`: no retry.

        :param attempt: the attempt that just ended, 0 for the first
        :param response: its answer, when it got one
        :param error: what it raised, when it got no answer
        """
        if error is not None:
            retryable = _retryable_error(error)
        else:
            retryable = response is not None and response.code in RETRY_STATUSES
        if not (retryable and self.may_retry and attempt < self.retries):
            return None
        wait = _retry_after(response) if response is not None else None
        if wait is None:
            wait = self.backoff(attempt)
        left = self.deadline - self.elapsed() - wait
        if left >= min(self.min_attempt_time, self.timeout):
            return wait
        return None

    @staticmethod
    def backoff(attempt: int) -> float:
        """Seconds to wait after *attempt* (0 for the first) without ``Retry-After``:
        random, up to ``BACKOFF_BASE * 2 ** attempt`` and :data:`BACKOFF_MAX`."""
        return random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))


def _retryable_error(error: BaseException) -> bool:
    """Whether retrying may help after *error*: a connection error, a timeout
    or a closed connection (Tornado's code 599)."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, httpclient.HTTPClientError) and error.code == 599


def _retry_after(response: httpclient.HTTPResponse) -> float | None:
    """Seconds the server asked to wait (RFC 9110, section 10.2.3), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
