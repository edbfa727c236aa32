"""A service whose logging is broken on purpose, run by the tests with divak.run().

``BROKEN_LOGGING`` says how, once divak.run() configured logging:

``root-handler-filter``
    a filter that raises is added to the root logger's handler;
``handler-logger-filter``
    a filter that raises is added to the request handler's logger;
``formatter``
    the root logger's handler gets a formatter that raises.

Routes: ``/hello/<name>`` logs on the handler's logger and answers 200,
``/hello/fail`` raises (500), ``/hello/missing`` raises a 404; ``/status``.
"""

from __future__ import annotations

import logging
import os

from tornado import web

import divak


class BrokenFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("broken filter")


class BrokenFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        raise RuntimeError("broken formatter")


class Hello(
    divak.RequestTracker,
    divak.ErrorLogger,
    divak.ErrorWriter,
    divak.Logger,
    web.RequestHandler,
):
    def get(self, name: str) -> None:
        self.logger.info("hello %s", name)
        if name == "fail":
            raise ValueError("failing on purpose")
        if name == "missing":
            raise web.HTTPError(404)
        self.write({"hello": name})


def break_logging(how: str) -> None:
    if how == "root-handler-filter":
        for handler in logging.getLogger().handlers:
            handler.addFilter(BrokenFilter())
    elif how == "handler-logger-filter":
        logging.getLogger(f"{Hello.__module__}.{Hello.__qualname__}").addFilter(
            BrokenFilter()
        )
    elif how == "formatter":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(BrokenFormatter())
    elif how:
        raise ValueError(f"unknown BROKEN_LOGGING={how!r}")


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [(r"/hello/(\w+)", Hello), (r"/status", divak.StatusHandler)], **settings
        )
        self.set_divak_service("broken-logging")
        self.add_divak_propagator(divak.RequestIdPropagation())
        break_logging(os.environ.get("BROKEN_LOGGING", ""))


if __name__ == "__main__":
    divak.run(Application)
