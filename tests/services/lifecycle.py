"""A small service for the life-cycle tests, configured by environment variables.

``COLLECTOR_URL``
    Zipkin endpoint to report spans to.
``HANG_ON_SHUTDOWN``
    ``1`` adds a shutdown callback that never finishes.
``FAIL_BEFORE_RUN``
    ``1`` adds a ``before_run`` callback that raises.
``NUMBER_OF_PROCS``, ``SHUTDOWN_LIMIT``, ``MAX_RESTARTS``, ``GC_FREEZE``
    passed to :func:`divak.run` as settings.

Routes: ``/slow?delay=SECONDS`` (asynchronous wait), ``/block?delay=SECONDS``
(blocks the process, so another process accepts the next connection),
``/env/NAME`` (a variable of the service's environment), ``/gc`` (the
objects the garbage collector froze and the ones a full collection walks),
``/status``.  Every response carries the serving process id.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time

from tornado import web

import divak

logger = logging.getLogger("lifecycle")


class SlowHandler(divak.RequestTracker, web.RequestHandler):
    async def get(self) -> None:
        delay = float(self.get_query_argument("delay", "1"))
        self.add_divak_tag("process.pid", os.getpid())
        logger.info("slow request started")
        await asyncio.sleep(delay)
        self.write({"pid": os.getpid(), "slept": delay})


class BlockHandler(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.add_divak_tag("process.pid", os.getpid())
        time.sleep(float(self.get_query_argument("delay", "0.1")))
        self.write({"pid": os.getpid()})


class EnvHandler(web.RequestHandler):
    def get(self, name: str) -> None:
        self.write({"name": name, "value": os.environ.get(name), "pid": os.getpid()})


class GCHandler(web.RequestHandler):
    def get(self) -> None:
        self.write({
            "frozen": gc.get_freeze_count(),
            "tracked": len(gc.get_objects()),
            "pid": os.getpid(),
        })


class Application(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [
                (r"/slow", SlowHandler),
                (r"/block", BlockHandler),
                (r"/env/(?P<name>\w+)", EnvHandler),
                (r"/gc", GCHandler),
                (r"/status", divak.StatusHandler),
            ],
            # The drain tests check the span of a /status answered while
            # draining: the probe is traced here.
            divak_trace_probes=True,
            **settings,
        )
        self.set_divak_service("lifecycle")
        self.set_divak_sample_probability(1.0)
        if os.environ.get("COLLECTOR_URL"):
            self.add_divak_reporter(divak.ZipkinReporter(os.environ["COLLECTOR_URL"]))
        self.on_start_callbacks.append(self.announce)
        if os.environ.get("HANG_ON_SHUTDOWN") == "1":
            self.on_shutdown_callbacks.append(self.hang)
        if os.environ.get("FAIL_BEFORE_RUN") == "1":
            self.before_run_callbacks.append(self.fail)

    def announce(self, app: web.Application, io_loop: object) -> None:
        logger.info("started in pid %d", os.getpid())
        logger.debug("debug logging is on")

    async def hang(self, app: web.Application) -> None:
        logger.info("shutdown callback hangs")
        await asyncio.Event().wait()

    def fail(self, app: web.Application, io_loop: object) -> None:
        raise RuntimeError("database unreachable")


def make_app(**settings: object) -> Application:
    """The factory :func:`divak.run` calls (in each child when forking)."""
    logger.info("building the application in pid %d", os.getpid())
    return Application(**settings)


if __name__ == "__main__":
    settings: dict[str, object] = {}
    if os.environ.get("NUMBER_OF_PROCS"):
        settings["number_of_procs"] = int(os.environ["NUMBER_OF_PROCS"])
    if os.environ.get("SHUTDOWN_LIMIT"):
        settings["shutdown_limit"] = float(os.environ["SHUTDOWN_LIMIT"])
    if os.environ.get("MAX_RESTARTS"):
        settings["max_restarts"] = int(os.environ["MAX_RESTARTS"])
    if os.environ.get("GC_FREEZE"):
        settings["gc_freeze"] = os.environ["GC_FREEZE"] == "1"
    divak.run(make_app, settings)
