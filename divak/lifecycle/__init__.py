"""Lifecycle: the application's callbacks, and serving it until it is stopped.

:class:`Application` (:mod:`divak.lifecycle.application`) runs the
start-up and shutdown callbacks and knows when it is ready;
:func:`run` (:mod:`divak.lifecycle.serve`) reads the settings and the
environment, configures logging and serves with a :class:`Runner`
(:mod:`divak.lifecycle.runner`), which drains on SIGTERM through a
:class:`~divak.lifecycle.server.DrainingHTTPServer`, from this process or
forked children (:mod:`divak.lifecycle.process`).
"""

from divak.lifecycle.application import (
    Application,
    CallbackManager,
    NotFoundHandler,
    StatusHandler,
)
from divak.lifecycle.runner import Runner
from divak.lifecycle.serve import run

__all__ = [
    "Application",
    "CallbackManager",
    "NotFoundHandler",
    "Runner",
    "StatusHandler",
    "run",
]
