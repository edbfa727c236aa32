"""A service with a slow endpoint, run by the tests with divak.run()."""

import asyncio
import os

from tornado import web

import divak


class SlowHandler(divak.RequestTracker, divak.Logger, web.RequestHandler):
    async def get(self) -> None:
        seconds = float(self.get_argument("seconds", "1"))
        self.logger.info("sleeping %.1fs", seconds)
        with self.record_operation("sleep"):
            await asyncio.sleep(seconds)
        self.write({"slept": seconds})


class GreetingHandler(divak.RequestTracker, divak.Logger, web.RequestHandler):
    """Speaks the demo backend's API, slowly: ``GREETING_DELAY`` seconds."""

    async def get(self, name: str) -> None:
        self.logger.info("greeting %s", name)
        with self.record_operation("sleep"):
            await asyncio.sleep(float(os.environ.get("GREETING_DELAY", "0")))
        self.write({"greeting": f"Hello, {name}!"})


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings):
        super().__init__(
            [
                (r"/slow", SlowHandler),
                (r"/greeting/(?P<name>[^/]+)", GreetingHandler),
                (r"/status", divak.StatusHandler),
            ],
            **settings,
        )
        self.set_divak_service("slow")


if __name__ == "__main__":
    divak.run(Application)
