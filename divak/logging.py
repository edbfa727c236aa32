"""The old name of :mod:`divak.log`, kept so existing imports keep working.

Tornado calls its own logging module ``tornado.log``; divak's is
:mod:`divak.log` now.
"""

from divak.log import (  # noqa: F401
    DEFAULT_FORMAT,
    REQUEST_CONTEXT_KEY,
    RequestLogger,
    default_logging_config,
    install_log_ids,
    install_record_factory,
)

__all__ = [
    "DEFAULT_FORMAT",
    "REQUEST_CONTEXT_KEY",
    "RequestLogger",
    "default_logging_config",
    "install_log_ids",
    "install_record_factory",
]
