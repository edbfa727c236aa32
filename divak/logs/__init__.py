"""Logs: every record carries the request's ids; one line per record.

:mod:`divak.logs.ids` installs the record factory that adds the ids and
has the default logging configuration; :mod:`divak.logs.formatters` writes
a record as one text or JSON line; :mod:`divak.logs.access` writes the
access log; :mod:`divak.logs.adapter` gives handlers their ``logger``;
:mod:`divak.logs.ratelimit` reports repeating faults without flooding.
"""

from divak.logs.adapter import Logger, LoggingHandler
from divak.logs.formatters import JsonFormatter, TextFormatter
from divak.logs.ids import (
    DEFAULT_FORMAT,
    RequestLogger,
    default_logging_config,
    install_log_ids,
)

__all__ = [
    "DEFAULT_FORMAT",
    "JsonFormatter",
    "Logger",
    "LoggingHandler",
    "RequestLogger",
    "TextFormatter",
    "default_logging_config",
    "install_log_ids",
]
