"""A service that configures no reporter, sampler nor propagator in code.

Everything comes from the ``OTEL_*`` environment variables.  Routes:
``/hello`` (traced), ``/status``.
"""

from __future__ import annotations

from tornado import web

import divak


class HelloHandler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [(r"/hello", HelloHandler), (r"/status", divak.StatusHandler)],
            **settings,
        )
        self.set_divak_service("plain")


if __name__ == "__main__":
    divak.run(Application)
