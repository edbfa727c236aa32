"""Errors: logged once, at the right level, and answered with a document.

:class:`ErrorLogger` (:mod:`divak.errors.logger`) and :class:`ErrorWriter`
(:mod:`divak.errors.writer`), sprockets.http's handler mix-ins with the
request's ids added.
"""

from divak.errors.logger import ErrorLogger
from divak.errors.writer import ErrorWriter

__all__ = ["ErrorLogger", "ErrorWriter"]
