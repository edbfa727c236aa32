"""Log formatters: one record is one line, in text or in JSON.

:func:`divak.logs.ids.default_logging_config` uses them; they work with any
:mod:`logging` configuration too, e.g. in a :func:`logging.config.dictConfig`
dict as ``{"()": "divak.logs.formatters.TextFormatter", "fmt": "..."}``.

* :class:`TextFormatter` escapes line breaks in the message and in every
  field, so that a value from a request (a path argument with ``%0A``)
  cannot forge a log line;
* :class:`JsonFormatter` writes one JSON object per line with ISO 8601
  timestamps and every ``extra`` attribute as a field (it needs
  python-json-logger, the ``json`` extra).
"""

from __future__ import annotations

import datetime
import logging
import re
import typing

try:
    from pythonjsonlogger.json import JsonFormatter as _JsonBase
except ImportError:  # the json extra is not installed
    _JsonBase = None  # type: ignore[misc,assignment]

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "escape_line_breaks",
    "escape_traceback",
    "iso_time",
]

# What str.splitlines() and most log viewers take for the end of a line.
_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK = re.compile(f"[{re.escape(_BREAKS)}]")
_ESCAPES = str.maketrans(
    {
        "\r": "\\r",
        "\n": "\\n",
        **{c: f"\\x{ord(c):02x}" for c in _BREAKS[2:8]},
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)

# The lines a traceback or stack is made of that start in the first column.
_HEADERS = frozenset(
    {
        "Traceback (most recent call last):",
        "Stack (most recent call last):",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)


def escape_line_breaks(text: str) -> str:
    """Return *text* with line breaks written as escapes, on one line.

    ``\\r`` and ``\\n`` become the two characters ``\\r`` and ``\\n``; the
    other characters :meth:`str.splitlines` breaks at (vertical tab, form
    feed, file/group/record separators, NEL, U+2028, U+2029) become
    ``\\xNN`` or ``\\uNNNN``.  Text without any is returned as it is.

    :param text: a message or field value
    """
    if _BREAK.search(text) is None:
        return text
    return text.translate(_ESCAPES)


def escape_traceback(text: str) -> str:
    """Keep the line structure of a traceback, escape breaks inside its lines.

    A formatted traceback is many lines by nature: the headers, the
    indented frame lines, the exception's line.  Anything else that starts
    in the first column (the rest of an exception message that holds line
    breaks, its notes) is joined to the line before with an escaped
    ``\\n``, so it cannot pass for a log record of its own.

    :param text: the output of :meth:`logging.Formatter.formatException` or
        :meth:`~logging.Formatter.formatStack`
    """
    lines = text.split("\n")
    out: list[str] = []
    expect_exception = True  # the exception's line ends a block of frames
    for index, line in enumerate(lines):
        line = escape_line_breaks(line)
        if line in _HEADERS:
            expect_exception = True
        elif not line:
            following = next((rest for rest in lines[index + 1 :] if rest), None)
            if following is not None and following not in _HEADERS and out:
                out[-1] += "\\n"
                continue
        elif line[0] in " \t":
            pass  # a frame, source line, caret line or nested group line
        elif expect_exception:
            expect_exception = False
        elif out:
            out[-1] += "\\n" + line
            continue
        out.append(line)
    return "\n".join(out)


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that never lets a record span lines.

    Line breaks in the formatted message and fields (``%(message)s``,
    ``%(name)s``, any ``extra``) are escaped by :func:`escape_line_breaks`;
    the traceback of ``exc_info`` and the stack of ``stack_info`` keep
    their real line breaks between their lines only
    (:func:`escape_traceback`).  Arguments are those of
    :class:`logging.Formatter`.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        """Format the record's fields, with line breaks escaped."""
        return escape_line_breaks(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        """Format *record*: one line, then its traceback and stack, if any."""
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + escape_traceback(record.exc_text)
        if record.stack_info:
            text += "\n" + escape_traceback(self.formatStack(record.stack_info))
        return text


def iso_time(record: logging.LogRecord) -> str:
    """The record's time in ISO 8601, UTC, milliseconds.

    :param record: any log record
    :returns: e.g. ``"2026-12-01T10:24:45.123+00:00"``
    """
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds")


class JsonFormatter(_JsonBase or logging.Formatter):  # type: ignore[misc]
    """python-json-logger's ``JsonFormatter`` with divak's fields and times.

    One JSON object per line with the keys ``time`` (ISO 8601 with the
    zone, e.g. ``2026-12-01T10:24:45.123+00:00``), ``level``, ``logger``,
    ``message``, ``otelTraceID``, ``otelSpanID``, ``divak_request_id``,
    ``exc_info`` for exceptions, and one more key for every attribute
    passed in ``extra`` (the access log's ``http.response.status_code``,
    ``http.request.method``, ``http.route`` and ``duration_ms``, for
    instance).  Line breaks inside values are escaped by JSON itself.

    Keyword arguments are those of python-json-logger's formatter; *fmt*
    and *rename_fields* default to the fields above.

    :raises RuntimeError: when python-json-logger is not installed
        (``pip install divak[json]``)
    """

    FIELDS = (
        "%(asctime)s %(levelname)s %(name)s %(message)s "
        "%(otelTraceID)s %(otelSpanID)s %(divak_request_id)s"
    )
    RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}

    def __init__(self, *args: typing.Any, **kwargs: typing.Any) -> None:
        """Build the formatter; see the class for the arguments."""
        if _JsonBase is None:
            raise RuntimeError(
                "LOG_FORMAT=json needs python-json-logger: pip install divak[json]"
            )
        if not args and "fmt" not in kwargs:
            kwargs["fmt"] = self.FIELDS
        kwargs.setdefault("rename_fields", dict(self.RENAMED))
        super().__init__(*args, **kwargs)

    def formatTime(  # noqa: N802
        self, record: logging.LogRecord, datefmt: str | None = None
    ) -> str:
        """ISO 8601 in UTC with milliseconds, unless *datefmt* is given."""
        if datefmt:
            return super().formatTime(record, datefmt)
        return iso_time(record)
