"""A service that logs what it is given, run by the tests with divak.run().

``ACCESS_LOG_FORMAT`` sets ``settings['access_log_format']``.
"""

import os

from tornado import web

import divak


class EchoHandler(divak.RequestTracker, divak.Logger, web.RequestHandler):
    def get(self, text: str) -> None:
        self.logger.info("echo: %s", text, extra={"echo.length": len(text)})
        self.write({"echo": text})


class FailHandler(divak.RequestTracker, divak.Logger, web.RequestHandler):
    def get(self, text: str) -> None:
        raise ValueError(f"cannot echo {text}")


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings):
        settings.setdefault("access_log_format", os.environ.get("ACCESS_LOG_FORMAT"))
        super().__init__(
            [
                (r"/echo/(.*)", EchoHandler),
                (r"/fail/(.*)", FailHandler),
                (r"/status", divak.StatusHandler),
            ],
            **settings,
        )
        self.set_divak_service("echo")
        self.add_divak_propagator(divak.RequestIdPropagation())


if __name__ == "__main__":
    divak.run(Application)
