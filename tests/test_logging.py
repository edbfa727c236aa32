"""Log correlation: ids on every record, the Logger mix-in, the access log."""

from __future__ import annotations

import logging
import subprocess
import sys

from tornado import httpclient, web

import divak
from divak.logs import RequestLogger
from divak.testing import SpanRecorder

from .conftest import ROOT, flush, listen, run


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter, as a user's program would."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_importing_divak_changes_nothing_process_wide() -> None:
    """A library that imports divak leaves the process's logging alone."""
    code = (
        "import logging\n"
        "before = logging.getLogRecordFactory()\n"
        "import divak, divak.testing, divak.logs\n"
        "print(logging.getLogRecordFactory() is before)\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_install_log_ids_gives_records_the_attributes_outside_requests() -> None:
    """Once installed, format strings may use the ids before any request."""
    code = (
        "import logging, divak\n"
        "divak.install_log_ids()\n"
        "logging.basicConfig(format='[%(otelTraceID)s|%(otelSpanID)s|"
        "%(otelTraceSampled)s|%(otelServiceName)s|%(divak_request_id)s] %(message)s')\n"
        "logging.getLogger('any').warning('outside')\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[0|0|False||] outside"


def test_an_application_installs_the_log_ids() -> None:
    code = (
        "import logging, divak\n"
        "from tornado import web\n"
        "class App(divak.Recorder, web.Application): pass\n"
        "App([])\n"
        "logging.basicConfig(format='[%(otelTraceID)s] %(message)s')\n"
        "logging.warning('after the application')\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[0] after the application"


def test_record_factory_chains_the_previous_one() -> None:
    code = (
        "import logging\n"
        "previous = logging.getLogRecordFactory()\n"
        "def mine(*a, **k):\n"
        "    r = previous(*a, **k); r.mine = 'yes'; return r\n"
        "logging.setLogRecordFactory(mine)\n"
        "import divak\n"
        "divak.install_log_ids()\n"
        "divak.install_log_ids()  # idempotent: no second copy\n"
        "logging.basicConfig(format='%(mine)s %(otelTraceID)s %(message)s')\n"
        "logging.warning('chained')\n"
    )
    result = _python(code)
    assert result.stderr.strip() == "yes 0 chained", result.stderr


class Plain(divak.RequestTracker, divak.Logger, web.RequestHandler):
    def get(self) -> None:
        self.logger.info("plain", extra={"custom": 1})
        self.write(type(self.logger).__name__)


class Existing(divak.RequestTracker, divak.Logger, web.RequestHandler):
    logger = logging.getLogger("my.own.logger")

    def get(self) -> None:
        self.logger.info("existing")
        self.write(type(self.logger).__name__)


class Teapot(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.set_status(418)


def test_logger_mixin(log_records: list[logging.LogRecord]) -> None:
    recorder = SpanRecorder()

    async def scenario():
        app = divak.Recorder([(r"/plain", Plain), (r"/existing", Existing)])
        app.add_divak_reporter(recorder)
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        bodies = [
            (await client.fetch(f"http://127.0.0.1:{port}{path}")).body
            for path in ("/plain", "/existing")
        ]
        await flush(app)
        return bodies

    assert run(scenario()) == [b"RequestLogger", b"RequestLogger"]
    (plain,) = [r for r in log_records if r.getMessage() == "plain"]
    assert plain.name == f"{__name__}.Plain" and plain.custom == 1
    (existing,) = [r for r in log_records if r.getMessage() == "existing"]
    assert existing.name == "my.own.logger"
    for record, route in ((plain, "GET /plain"), (existing, "GET /existing")):
        (span,) = recorder.named(route)
        assert record.otelTraceID == f"{span.context.trace_id:032x}"
        assert record.otelSpanID == f"{span.context.span_id:016x}"
        assert record.otelTraceSampled is True


def test_request_logger_merges_extra() -> None:
    handler_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            handler_records.append(record)

    base = logging.getLogger("merge.test")
    base.addHandler(Keep())
    base.setLevel(logging.INFO)
    RequestLogger(base, {"a": 1}).info("x", extra={"b": 2})
    assert handler_records[0].a == 1 and handler_records[0].b == 2


def test_access_log_levels(log_records: list[logging.LogRecord]) -> None:
    async def scenario():
        app = divak.Recorder([(r"/teapot", Teapot), (r"/plain", Plain)])
        app.add_divak_reporter(SpanRecorder())
        port = listen(app)
        client = httpclient.AsyncHTTPClient()
        for path in ("/plain", "/teapot", "/nowhere"):
            await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)

    run(scenario())
    access = {
        r.getMessage().split('"')[1]: r.levelno
        for r in log_records
        if r.name == "tornado.access"
    }
    assert access == {
        "GET /plain": logging.INFO,
        "GET /teapot": logging.WARNING,
        "GET /nowhere": logging.WARNING,
    }


def test_access_log_uses_the_forwarded_client_address(
    log_records: list[logging.LogRecord],
) -> None:
    async def scenario():
        app = divak.Recorder([(r"/plain", Plain)])
        app.add_divak_reporter(SpanRecorder())
        server = app.listen(0, "127.0.0.1", xheaders=True)
        port = next(iter(server._sockets.values())).getsockname()[1]
        await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/plain", headers={"X-Forwarded-For": "203.0.113.9"}
        )
        server.stop()

    run(scenario())
    (line,) = [r.getMessage() for r in log_records if r.name == "tornado.access"]
    assert line.startswith('203.0.113.9 "GET /plain" 200 ')


def test_with_the_sdk_disabled_records_say_0_not_32_zeros() -> None:
    code = (
        "import asyncio, logging, os\n"
        "os.environ['OTEL_SDK_DISABLED'] = 'true'\n"
        "import divak\n"
        "from tornado import httpclient, web\n"
        "class H(web.RequestHandler):\n"
        "    def get(self):\n"
        "        logging.getLogger('h').warning('inside')\n"
        "class App(divak.Recorder, web.Application): pass\n"
        "logging.basicConfig(format='[%(otelTraceID)s|%(otelSpanID)s] %(message)s')\n"
        "async def main():\n"
        "    app = App([('/', H)])\n"
        "    server = app.listen(0, '127.0.0.1')\n"
        "    port = next(iter(server._sockets.values())).getsockname()[1]\n"
        "    await httpclient.AsyncHTTPClient().fetch(f'http://127.0.0.1:{port}/')\n"
        "asyncio.run(main())\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "[0|0] inside" in result.stderr.splitlines()
