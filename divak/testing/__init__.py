"""Helpers for testing services built with divak.

sprockets.http's ``sprockets.http.testing`` names, and divak's own:

:class:`DivakTestCase` (alias :class:`SprocketsHttpTestCase`),
:class:`SpanRecorder` and :class:`RecordingLogHandler` live in
:mod:`divak.testing.case`; :class:`ZipkinCollector`, a real Zipkin v2
endpoint in a thread, in :mod:`divak.testing.collector`.
"""

from divak.testing.case import (
    DivakTestCase,
    RecordingLogHandler,
    SpanRecorder,
    SprocketsHttpTestCase,
)
from divak.testing.collector import ZipkinCollector

__all__ = [
    "DivakTestCase",
    "RecordingLogHandler",
    "SpanRecorder",
    "SprocketsHttpTestCase",
    "ZipkinCollector",
]
