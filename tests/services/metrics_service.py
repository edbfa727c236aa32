"""A metered service, measured through divak's mix-ins only.

Run in-process by tests/test_metrics.py and with ``divak.run`` in two
forked children by tests/test_metrics_processes.py.
"""

import asyncio
import os

from tornado import web

import divak
from divak.testing import SpanRecorder


class ItemHandler(divak.RequestTracker, web.RequestHandler):
    async def get(self, item_id):
        with self.record_operation("query-db"):
            await asyncio.sleep(0)
        status = int(self.get_argument("status", "200"))
        if status == 500:
            raise RuntimeError("boom")
        if status >= 400:
            raise web.HTTPError(status)
        self.set_header("X-Pid", str(os.getpid()))
        self.write({"id": item_id})


class SlowHandler(divak.RequestTracker, web.RequestHandler):
    async def get(self):
        await asyncio.sleep(float(self.get_argument("seconds", "0.5")))
        self.write("done")


class EventHandler(divak.RequestTracker, web.RequestHandler):
    def post(self):
        tenant = self.get_argument("tenant")
        self.count_divak_event("cache.miss", 2, tenant=tenant)
        self.record_divak_value("queue.wait", 0.2, "s", queue="q" * 500)
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
        # Spans stay in memory: this service is about its metrics, and a
        # logged span per request would fill the test's output pipe.
        self.add_divak_reporter(SpanRecorder())


if __name__ == "__main__":
    divak.run(Application, {"number_of_procs": 2})
