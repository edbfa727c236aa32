"""A divak service meant to run under ``opentelemetry-instrument``.

It configures nothing in code but its service name (reporters, propagators
and logging come from the environment and from :func:`divak.run`), as a
team that adds divak to an auto-instrumented service would start.  Routes:

``/hello``
    logs one line, calls ``/downstream`` of the same service with
    :meth:`~divak.HttpClientMixin.send_request`, answers ``hello``
``/downstream``
    answers the ``traceparent`` header it received
``/status``, ``/metrics``
    divak's readiness and metrics handlers
"""

from __future__ import annotations

import logging

from tornado import web

import divak

logger = logging.getLogger("auto.hello")


class Hello(divak.RequestTracker, divak.HttpClientMixin, web.RequestHandler):
    async def get(self) -> None:
        logger.info("saying hello")
        port = self.request.host.rpartition(":")[2]
        response = await self.send_request(f"http://127.0.0.1:{port}/downstream")
        self.write(b"hello " + response.body)


class Downstream(web.RequestHandler):
    def get(self) -> None:
        self.write(self.request.headers.get("traceparent", "-"))


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [
                (r"/hello", Hello),
                (r"/downstream", Downstream),
                (r"/status", divak.StatusHandler),
                (r"/metrics", divak.MetricsHandler),
            ],
            **settings,
        )
        self.set_divak_service("auto")


if __name__ == "__main__":
    divak.run(Application)
