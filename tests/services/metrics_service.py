"""A metered service, measured through divak's mix-ins only.

Run in-process by tests/test_metrics.py and with ``divak.run`` in two
forked children by tests/test_metrics_processes.py.
"""

import asyncio
import os
import time

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


class BlockHandler(divak.RequestTracker, web.RequestHandler):
    """Block this process's IOLoop until the file ``?until=`` exists (60 s at most).

    The headers are sent first, so the client knows the block has begun.
    """

    def get(self):
        until = self.get_argument("until")
        self.set_header("X-Pid", str(os.getpid()))
        self.flush()
        deadline = time.monotonic() + 60
        while not os.path.exists(until) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.finish("released")


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
                (r"/block", BlockHandler),
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
