"""A divak-tornado 0.0.3 service running on divak.

The handler and application classes are divak-tornado code, unchanged:
``Logger`` alone is a request handler, ``Recorder`` alone an application,
``RequestIdPropagator`` relays the ``Request-Id`` header, and the log
format prints ``%(divak_request_id)s``.  One line changed: ``main`` serves
with :func:`divak.run` (``PORT`` from the environment, graceful SIGTERM)
instead of ``app.listen(8000)`` and ``IOLoop.current().start()``, which
still work but stop abruptly on SIGTERM.

Run it with ``PORT=8000 python examples/divak_tornado_port.py``.
"""

import json
import logging

from tornado import web

import divak
import divak.api


class StatusHandler(divak.api.Logger):
    def get(self):
        self.logger.info("status requested")
        self.set_status(200)
        self.set_header("Content-Type", "application/json")
        body = {"service": "port-example", "version": "0.0.3", "status": "ok"}
        self.write(json.dumps(body).encode("utf-8"))


class PortedApplication(divak.api.Recorder):
    def __init__(self, *args, **kwargs):
        super().__init__([web.url("/status", StatusHandler)], *args, **kwargs)
        self.set_divak_service("port-example")
        self.add_divak_propagator(divak.api.RequestIdPropagator())


def main():
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)1.1s - %(name)s: %(message)s {%(divak_request_id)s}",
    )
    divak.run(PortedApplication)


if __name__ == "__main__":
    main()
