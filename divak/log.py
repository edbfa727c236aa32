"""Deprecated: the old name of :mod:`divak.logs`.

Importing it warns :class:`DeprecationWarning`; the names it had keep
working (``install_record_factory`` through :mod:`divak.logging`).
"""

import warnings

from divak.logs.ids import (
    DEFAULT_FORMAT,
    REQUEST_CONTEXT_KEY,
    RequestLogger,
    default_logging_config,
    install_log_ids,
)

__all__ = [
    "DEFAULT_FORMAT",
    "REQUEST_CONTEXT_KEY",
    "RequestLogger",
    "default_logging_config",
    "install_log_ids",
]

warnings.warn(
    f"{__name__} is deprecated: import divak.logs (or divak) instead",
    DeprecationWarning,
    stacklevel=2,
)
