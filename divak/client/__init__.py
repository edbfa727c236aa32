"""Outgoing HTTP requests that continue the trace: :class:`HttpClientMixin`.

The mix-in lives in :mod:`divak.client.mixin`, with its defaults
(timeouts, retries, the statuses it retries).
"""

from divak.client.mixin import (
    DEFAULT_DEADLINE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    IDEMPOTENT_METHODS,
    MIN_ATTEMPT_TIME,
    RETRY_STATUSES,
    HttpClientMixin,
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
