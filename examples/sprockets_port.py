"""A sprockets.http 2.x service moved to divak by changing its imports.

Everything below the imports is written as for sprockets.http: the
application owns its readiness event and sets it once its database is
connected, ``on_start`` and shutdown callbacks are coroutines, and the
handlers use the ``LoggingHandler``/``ErrorLogger``/``ErrorWriter``
mix-ins.  The only change: ``from sprockets.http import app, mixins, run``
became ``from divak import app, mixins, run``.

The "database" is any TCP listener at ``DATABASE_HOST``/``DATABASE_PORT``
(default 127.0.0.1:5432); ``/status`` answers 503 until it accepts the
connection.  Run it with ``PORT=8000 python examples/sprockets_port.py``.
"""

import asyncio
import logging
import os

from tornado import locks, web

from divak import app, mixins, run


class GreetingHandler(
    mixins.LoggingHandler, mixins.ErrorLogger, mixins.ErrorWriter, web.RequestHandler
):
    def get(self, name):
        if name == "nobody":
            raise web.HTTPError(404, "no greeting for %s", name, reason="Unknown Name")
        self.logger.info("greeting %s", name)
        self.write({"greeting": f"Hello, {name}!"})


class StatusHandler(web.RequestHandler):
    def get(self):
        if not self.application.ready_to_serve.is_set():
            self.set_status(503)
            self.write({"status": "connecting"})
        else:
            self.write({"status": "ok"})


class Application(app.Application):
    def __init__(self, **settings):
        settings.setdefault("service", "greeter")
        settings.setdefault("version", "1.0.0")
        super().__init__(
            [
                web.url(r"/greeting/(?P<name>\w+)", GreetingHandler),
                web.url(r"/status", StatusHandler),
            ],
            **settings,
        )
        self.logger = logging.getLogger("greeter")
        self.database = None
        self.ready_to_serve = locks.Event()
        self.on_start_callbacks.append(self.connect_database)
        self.on_shutdown_callbacks.append(self.disconnect_database)

    async def connect_database(self, application, io_loop):
        host = os.environ.get("DATABASE_HOST", "127.0.0.1")
        port = int(os.environ.get("DATABASE_PORT", "5432"))
        self.logger.info("connecting to the database at %s:%s", host, port)
        while self.database is None:
            try:
                self.database = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.1)
        self.logger.info("database connected")
        self.ready_to_serve.set()

    async def disconnect_database(self, application):
        if self.database is not None:
            _, writer = self.database
            writer.close()
            await writer.wait_closed()
            self.logger.info("database connection closed")


if __name__ == "__main__":
    run(Application, {"shutdown_limit": 5})
