"""A metered service: the metrics API called explicitly from standard hooks.

Run in-process by tests/test_metrics.py and with ``divak.run`` in two
forked children by tests/test_metrics_processes.py.
"""

import asyncio
import os
import time

from tornado import web

import divak
from divak import metrics, metrics_peers


class Metered(divak.RequestTracker):
    """Handler side: ends the request's measurement where its span ends."""

    def _finish_metrics(self, status, error_type=None):
        context = self.divak_context
        metrics.application_metrics(self.application).request_finished(
            self.request,
            self.application.divak_route(self),
            status,
            error_type or context.exception_type,
            context.context,
        )

    def on_finish(self):
        self._finish_metrics(self.get_status())
        super().on_finish()

    def on_connection_close(self):
        self._finish_metrics(None, "client_disconnected")
        super().on_connection_close()


class ItemHandler(Metered, web.RequestHandler):
    async def get(self, item_id):
        app_metrics = metrics.application_metrics(self.application)
        started = time.perf_counter()
        await asyncio.sleep(0)
        app_metrics.record_operation(
            "query-db", time.perf_counter() - started, self.divak_context.context
        )
        status = int(self.get_argument("status", "200"))
        if status == 500:
            raise RuntimeError("boom")
        if status >= 400:
            raise web.HTTPError(status)
        self.set_header("X-Pid", str(os.getpid()))
        self.write({"id": item_id})


class SlowHandler(Metered, web.RequestHandler):
    async def get(self):
        await asyncio.sleep(float(self.get_argument("seconds", "0.5")))
        self.write("done")


class EventHandler(Metered, web.RequestHandler):
    def post(self):
        app_metrics = metrics.application_metrics(self.application)
        tenant = self.get_argument("tenant")
        app_metrics.count_event("cache.miss", 2, {"tenant": tenant})
        app_metrics.record_value(
            "queue.wait", 0.2, "s", {"queue": "q" * 500}, self.divak_context.context
        )
        self.write("ok")


class PidMetricsHandler(divak.MetricsHandler):
    def set_default_headers(self):
        self.set_header("X-Pid", str(os.getpid()))


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings):
        super().__init__(
            [
                (r"/items/(?P<item_id>\d+)", ItemHandler),
                (r"/slow", SlowHandler),
                (r"/events", EventHandler),
                (r"/metrics", PidMetricsHandler),
                (r"/status", divak.StatusHandler),
            ],
            **settings,
        )
        self.set_divak_service("metered")
        self.add_divak_reporter(divak.LoggingReporter())
        # Every request is counted from its arrival: before any handler code.
        self.add_transform(self._count_arrival)

    def _count_arrival(self, request):
        metrics.application_metrics(self).request_started(request)
        return web.OutputTransform(request)

    def log_request(self, handler):
        # Handlers without the mix-in (404s, /status) end here, as their span.
        super().log_request(handler)
        if not isinstance(handler, Metered):
            metrics.application_metrics(self).request_finished(
                handler.request, self.divak_route(handler), handler.get_status()
            )


if __name__ == "__main__":
    with metrics_peers.shared_directory():
        divak.run(Application, {"number_of_procs": 2})
