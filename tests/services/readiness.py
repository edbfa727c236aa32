"""A service whose start-up waits for a "database", for the readiness tests.

``DB_PORT``
    the TCP port of the database; the ``on_start`` callback connects to it,
    retrying until something listens there.
``OWN_EVENT``
    ``1``: the application replaces ``ready_to_serve`` with its own
    ``tornado.locks.Event`` and sets it once connected (sprockets.http's
    pattern); otherwise divak's default event is used.
``FAIL_BEFORE_RUN``
    ``1``: the coroutine ``before_run`` callback raises.

Routes: ``/status`` and ``/warm`` (what the coroutine ``before_run``
callback stored).
"""

from __future__ import annotations

import asyncio
import logging
import os

from tornado import locks, web

import divak

logger = logging.getLogger("readiness")


class Warm(web.RequestHandler):
    def get(self) -> None:
        self.write({"warm": self.settings.get("warm", False)})


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [(r"/status", divak.StatusHandler), (r"/warm", Warm)], **settings
        )
        self.set_divak_service("readiness")
        if os.environ.get("OWN_EVENT") == "1":
            self.ready_to_serve = locks.Event()
        self.before_run_callbacks.append(self.warm_up)
        self.on_start_callbacks.append(self.connect)

    async def warm_up(self, app: web.Application, io_loop: object) -> None:
        await asyncio.sleep(0.01)
        if os.environ.get("FAIL_BEFORE_RUN") == "1":
            raise RuntimeError("cache unreachable")
        self.settings["warm"] = True

    async def connect(self, app: web.Application, io_loop: object) -> None:
        port = int(os.environ["DB_PORT"])
        logger.info("connecting to the database")
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        logger.info("database connected")
        if os.environ.get("OWN_EVENT") == "1":
            self.ready_to_serve.set()


if __name__ == "__main__":
    divak.run(Application)
