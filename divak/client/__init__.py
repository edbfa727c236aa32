"""Outgoing HTTP requests that continue the trace: :class:`HttpClientMixin`.

The mix-in lives in :mod:`divak.client.mixin`; when a call is tried again,
and its defaults (timeouts, retries, the statuses it retries), in
:mod:`divak.client.retry`.
"""

from divak.client.mixin import HttpClientMixin
from divak.client.retry import (
    DEFAULT_DEADLINE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    IDEMPOTENT_METHODS,
    MIN_ATTEMPT_TIME,
    RETRY_STATUSES,
)
from divak.redaction import redact_url

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "MIN_ATTEMPT_TIME",
    "RETRY_STATUSES",
    "HttpClientMixin",
    "redact_url",
]
