"""The demo's frontend service: ``GET /hello/{name}`` calls the backend.

Run it alone with ``PORT=8000 BACKEND_URL=http://127.0.0.1:8001
python examples/frontend.py``.
"""

import json
import os
import sys

from tornado import web

import divak

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backend import add_reporters  # noqa: E402


class HelloHandler(
    divak.RequestTracker,
    divak.Logger,
    divak.HttpClientMixin,
    divak.ErrorLogger,
    divak.ErrorWriter,
    web.RequestHandler,
):
    async def get(self, name: str) -> None:
        backend = self.settings["backend_url"]
        self.logger.info("asking the backend to greet %s", name)
        response = await self.send_request(
            f"{backend}/greeting/{name}", url_template="/greeting/{name}"
        )
        if response.code != 200:
            raise web.HTTPError(502, "backend answered %s", response.code)
        self.write({"message": json.loads(response.body)["greeting"]})


class Application(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    def __init__(self, **settings):
        settings.setdefault(
            "backend_url", os.environ.get("BACKEND_URL", "http://127.0.0.1:8001")
        )
        super().__init__(
            [
                (r"/hello/(?P<name>[^/]+)", HelloHandler),
                (r"/status", divak.StatusHandler),
                (r"/metrics", divak.MetricsHandler),
            ],
            **settings,
        )
        self.set_divak_service("frontend")
        self.set_divak_sample_probability(1.0)
        add_reporters(self)
        self.add_divak_propagator(divak.TraceContextPropagation())
        self.add_divak_propagator(divak.ZipkinPropagation())
        self.add_divak_propagator(divak.RequestIdPropagation())


if __name__ == "__main__":
    divak.run(Application)
