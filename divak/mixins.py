"""sprockets.http's ``sprockets.http.mixins`` names, so a port changes only its imports.

:class:`ErrorLogger` and :class:`ErrorWriter` live in :mod:`divak.errors`,
:class:`LoggingHandler` in :mod:`divak.logs.adapter`.
"""

from divak.errors import ErrorLogger, ErrorWriter
from divak.logs.adapter import LoggingHandler

__all__ = ["ErrorLogger", "ErrorWriter", "LoggingHandler"]
