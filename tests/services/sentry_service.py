"""A service that reports its errors to the Sentry DSN in ``SENTRY_DSN``.

Routes: ``/crash`` (raises), ``/log-error`` (logs an ERROR), ``/status``;
any other path raises too.
"""

from __future__ import annotations

import logging

from tornado import web

import divak
import divak.integrations.sentry


class CrashHandler(divak.RequestTracker, divak.ErrorLogger, web.RequestHandler):
    def get(self) -> None:
        raise RuntimeError("boom in a handler")


class LogErrorHandler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        logging.getLogger("service").error("something failed quietly")
        self.write("logged")


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [
                (r"/crash", CrashHandler),
                (r"/log-error", LogErrorHandler),
                (r"/status", divak.StatusHandler),
                (r"/.*", CrashHandler),
            ],
            **settings,
        )
        self.set_divak_service("sentry-test")
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())


if __name__ == "__main__":
    divak.integrations.sentry.install()
    divak.run(Application)
