"""Deprecated: the old name of :mod:`divak.logs`.

Importing it warns :class:`DeprecationWarning`; the names it had keep
working.  ``install_record_factory`` is the old name of
:func:`divak.install_log_ids`.
"""

from __future__ import annotations

import typing
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
    "install_record_factory",
]

warnings.warn(
    f"{__name__} is deprecated: import divak.logs (or divak) instead",
    DeprecationWarning,
    stacklevel=2,
)


def install_record_factory(*args: typing.Any, **kwargs: typing.Any) -> None:
    """Deprecated name of :func:`divak.install_log_ids`; warns, then calls it."""
    warnings.warn(
        "install_record_factory is deprecated: call divak.install_log_ids()",
        DeprecationWarning,
        stacklevel=2,
    )
    install_log_ids(*args, **kwargs)
