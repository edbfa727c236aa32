"""Log formatters: one record is one line, in text or in JSON.

:func:`divak.logs.ids.default_logging_config` uses them; they work with any
:mod:`logging` configuration too, e.g. in a :func:`logging.config.dictConfig`
dict as ``{"()": "divak.logs.formatters.TextFormatter", "fmt": "..."}``.

* :class:`TextFormatter` escapes line breaks and every other control
  character in the message and in every field, so that a value from a
  request (a path argument with ``%0A``, a header with a C1 byte) can
  neither forge a log line nor send escape sequences to a terminal; the
  lines of a traceback are indented under their record;
* :class:`JsonFormatter` writes one JSON object per line with ISO 8601
  timestamps and every ``extra`` attribute as a field (it needs
  python-json-logger, the ``json`` extra); JSON escapes control
  characters itself.
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
    "escape_controls",
    "escape_line_breaks",
    "escape_traceback",
    "iso_time",
]

# Control characters (C0 but the tab, DEL, C1), the characters
# str.splitlines() breaks at that are not control characters (U+2028,
# U+2029), and the bidirectional embeddings, overrides and isolates, which
# reorder the text a terminal or viewer shows.
_CONTROLS = (
    "\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
)
_CONTROL = re.compile(f"[{_CONTROLS}]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ESCAPES = {
    code: _escape(chr(code))
    for code in [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)]
    + [0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}
_ESCAPES[ord("\r")] = "\\r"
_ESCAPES[ord("\n")] = "\\n"

# The lines a traceback or stack is made of that start in its first column.
_HEADERS = frozenset(
    {
        "Traceback (most recent call last):",
        "Stack (most recent call last):",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)


def escape_controls(text: str) -> str:
    """Return *text* with control characters written as escapes, on one line.

    ``\\r`` and ``\\n`` become the two characters ``\\r`` and ``\\n``;
    the other C0 control characters (ESC, BEL, vertical tab, form feed,
    file/group/record separators...), DEL, the C1 control characters
    (U+0080 to U+009F: NEL, CSI...), U+2028, U+2029 and the bidirectional
    embedding, override and isolate characters (U+202A to U+202E, U+2066
    to U+2069) become ``\\xNN`` or ``\\uNNNN``.  The tab stays.  Text
    without any is returned as it is.

    :param text: a message or field value
    """
    if _CONTROL.search(text) is None:
        return text
    return text.translate(_ESCAPES)


#: The former name of :func:`escape_controls`, which escapes line breaks
#: and every other control character.
escape_line_breaks = escape_controls


def escape_traceback(text: str) -> str:
    """Keep the line structure of a traceback, escape controls inside its lines.

    A formatted traceback is many lines by nature: the headers, the
    indented frame lines, the exception's line.  Anything else that starts
    in the first column (the rest of an exception message that holds line
    breaks, its notes) is joined to the line before with an escaped
    ``\\n``; control characters inside the lines are escaped
    (:func:`escape_controls`).

    :param text: the output of :meth:`logging.Formatter.formatException` or
        :meth:`~logging.Formatter.formatStack`
    """
    lines = text.split("\n")
    out: list[str] = []
    expect_exception = True  # the exception's line ends a block of frames
    for index, line in enumerate(lines):
        line = escape_controls(line)
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
    """A :class:`logging.Formatter` whose records start their own line only.

    A record is one line, followed by its traceback and stack when it has
    them, each of their lines indented by :attr:`indent`; so every line
    that starts in the first column starts a record, whatever the record
    holds:

    * control characters in the formatted message and fields
      (``%(message)s``, ``%(name)s``, any ``extra``) are escaped by
      :func:`escape_controls`: line breaks, ESC, BEL, C1 characters...
    * the traceback of ``exc_info`` and the stack of ``stack_info`` keep
      their real line breaks between their lines only
      (:func:`escape_traceback`), with control characters escaped inside
      them too, and every one of their lines is indented.

    Arguments are those of :class:`logging.Formatter`.

    .. attribute:: indent

       What each line after a record's first starts with: four spaces.
       A subclass may set another prefix (it should start with a space or
       a tab).
    """

    indent = "    "

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        """Format the record's fields, with control characters escaped."""
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        """Format *record*: one line, then its indented traceback and stack."""
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        more: list[str] = []
        if record.exc_text:
            more.append(escape_traceback(record.exc_text))
        if record.stack_info:
            more.append(escape_traceback(self.formatStack(record.stack_info)))
        if more:
            lines = "\n".join(more).split("\n")
            text += "".join(f"\n{self.indent}{line}" for line in lines)
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
