"""A WebSocket chat service for the drain tests, run with divak.run().

``COLLECTOR_URL``
    Zipkin endpoint to report spans to.
``SHUTDOWN_LIMIT``
    passed to :func:`divak.run` as a setting.

Routes: ``/ws/{room}`` (a plain ``WebSocketHandler`` that echoes every
message), ``/status``.
"""

from __future__ import annotations

import logging
import os

from tornado import websocket

import divak

logger = logging.getLogger("websocket_service")


class EchoSocket(websocket.WebSocketHandler):
    def open(self, room: str) -> None:
        logger.info("websocket open in %s", room)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)

    def on_close(self) -> None:
        logger.info("websocket closed with %s", self.close_code)


class Application(divak.Recorder, divak.Application):
    def __init__(self, **settings: object) -> None:
        super().__init__(
            [(r"/ws/(?P<room>\w+)", EchoSocket), (r"/status", divak.StatusHandler)],
            **settings,
        )
        self.set_divak_service("chat")
        if os.environ.get("COLLECTOR_URL"):
            self.add_divak_reporter(divak.ZipkinReporter(os.environ["COLLECTOR_URL"]))


if __name__ == "__main__":
    settings: dict[str, object] = {}
    if os.environ.get("SHUTDOWN_LIMIT"):
        settings["shutdown_limit"] = float(os.environ["SHUTDOWN_LIMIT"])
    divak.run(Application, settings)
