"""A service with a slow endpoint, run by the tests with divak.run()."""

import asyncio

from tornado import web

import divak


class SlowHandler(divak.RequestTracker, divak.Logger, web.RequestHandler):
    async def get(self) -> None:
        seconds = float(self.get_argument("seconds", "1"))
        self.logger.info("sleeping %.1fs", seconds)
        with self.record_operation("sleep"):
            await asyncio.sleep(seconds)
        self.write({"slept": seconds})


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings):
        super().__init__(
            [(r"/slow", SlowHandler), (r"/status", divak.StatusHandler)], **settings
        )
        self.set_divak_service("slow")


if __name__ == "__main__":
    divak.run(Application)
