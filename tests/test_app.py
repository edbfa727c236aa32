"""divak.Application: callbacks, readiness, Server header; Runner in process."""

from __future__ import annotations

import asyncio
import json
import logging
import typing

import pytest
from opentelemetry.trace import SpanKind
from tornado import httpclient, ioloop, netutil, web

import divak
from divak.testing import SpanRecorder
from tests.conftest import ROOT, free_port, listen, run


class Traced(divak.Recorder, divak.Application):
    pass


class Hello(divak.RequestTracker, web.RequestHandler):
    def get(self) -> None:
        self.write("hello")


def make_app(**settings: typing.Any) -> Traced:
    return Traced([(r"/hello", Hello), (r"/status", divak.StatusHandler)], **settings)


async def fetch(port: int, path: str) -> httpclient.HTTPResponse:
    client = httpclient.AsyncHTTPClient()
    return await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False)


def test_status_follows_readiness() -> None:
    async def scenario() -> list[tuple[int, dict[str, str], str | None]]:
        app = make_app()
        port = listen(app)
        seen = []
        for step in ("starting", "ready", "draining"):
            if step == "ready":
                app.ready_to_serve.set()
            if step == "draining":
                app.draining = True
                app.ready_to_serve.clear()
            response = await fetch(port, "/status")
            seen.append(
                (
                    response.code,
                    json.loads(response.body),
                    response.headers.get("Retry-After"),
                )
            )
        return seen

    assert run(scenario()) == [
        (503, {"status": "starting"}, "5"),
        (200, {"status": "ok"}, None),
        (503, {"status": "draining"}, "5"),
    ]


def test_status_handler_in_a_plain_application() -> None:
    async def scenario() -> int:
        port = listen(web.Application([(r"/status", divak.StatusHandler)]))
        return (await fetch(port, "/status")).code

    assert run(scenario()) == 200


def server_header(**settings: typing.Any) -> str | None:
    async def scenario() -> str | None:
        port = listen(make_app(**settings))
        return (await fetch(port, "/hello")).headers.get("Server")

    return run(scenario())


def test_server_header() -> None:
    assert server_header(service="greeter", version="1.2.3") == "greeter/1.2.3"
    assert server_header(service="greeter") == "greeter"
    assert server_header() is None  # Tornado's own header is removed too
    assert server_header(service="greeter", server_header=None) is None
    assert server_header(server_header="edge/7") == "edge/7"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"service": "greeter", "version": "1.2.3"}, "greeter/1.2.3"),
        ({"service": "greeter"}, "greeter"),
        ({"version": "1.2.3"}, None),
        ({}, None),
        ({"service": "greeter", "server_header": "edge/7"}, "edge/7"),
        ({"service": "greeter", "server_header": None}, None),
    ],
)
def test_server_header_setting_is_left_as_sprockets_http_leaves_it(
    settings: dict[str, typing.Any], expected: str | None
) -> None:
    # sprockets.http's Application sets settings['server_header'] in its
    # constructor (service/version, service, or None); handlers read it.
    for app in (divak.Application([], **settings), make_app(**settings)):
        assert app.settings["server_header"] == expected


class ServerFromSettings(web.RequestHandler):
    """sprockets.http's pattern: a handler sets the header from the setting."""

    def set_default_headers(self) -> None:
        self.set_header("X-Server", self.settings["server_header"])

    def get(self) -> None:
        self.write("ok")


def test_server_header_set_later_wins() -> None:
    async def scenario() -> tuple[str | None, str | None, str | None]:
        app = divak.Application(
            [(r"/", ServerFromSettings)], service="greeter", version="2"
        )
        port = listen(app)
        first = await fetch(port, "/")
        app.settings["server_header"] = "edge/9"
        second = await fetch(port, "/")
        return (
            first.headers.get("X-Server"),
            first.headers.get("Server"),
            second.headers.get("Server"),
        )

    assert run(scenario()) == ("greeter/2", "greeter/2", "edge/9")


def test_start_runs_before_run_then_spawns_on_start() -> None:
    calls: list[tuple[str, typing.Any, typing.Any]] = []

    async def on_start(app: web.Application, io_loop: ioloop.IOLoop) -> None:
        calls.append(("on_start", app, io_loop))

    async def scenario() -> None:
        app = make_app()
        app.before_run_callbacks.append(
            lambda a, loop: calls.append(("first", a, loop))
        )
        app.before_run_callbacks.append(
            lambda a, loop: calls.append(("second", a, loop))
        )
        app.on_start_callbacks.append(on_start)
        io_loop = ioloop.IOLoop.current()
        app.start(io_loop)
        assert [name for name, _, _ in calls] == ["first", "second"]
        await asyncio.sleep(0.01)
        assert [name for name, _, _ in calls] == ["first", "second", "on_start"]
        assert all(a is app and loop is io_loop for _, a, loop in calls)

    run(scenario())


def test_before_run_exception_propagates(
    log_records: list[logging.LogRecord],
) -> None:
    def fail(app: web.Application, io_loop: ioloop.IOLoop) -> None:
        raise RuntimeError("no database")

    async def scenario() -> None:
        app = make_app()
        app.before_run_callbacks.append(fail)
        try:
            app.start(ioloop.IOLoop.current())
        except RuntimeError:
            return
        raise AssertionError("start did not raise")

    run(scenario())
    assert any("start cancelled" in r.getMessage() and r.exc_info for r in log_records)


def test_shutdown_callbacks_are_bounded_and_never_fatal(
    log_records: list[logging.LogRecord],
) -> None:
    finished: list[str] = []

    def sync_failure(app: web.Application) -> None:
        raise ValueError("sync failure")

    async def async_failure(app: web.Application) -> None:
        raise ValueError("async failure")

    async def quick(app: web.Application) -> None:
        await asyncio.sleep(0)
        finished.append("quick")

    async def forever(app: web.Application) -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        app = make_app()
        app.on_shutdown_callbacks.extend(
            [
                sync_failure,
                async_failure,
                quick,
                forever,
                lambda a: finished.append("s"),
            ]
        )
        await asyncio.wait_for(app.run_shutdown_callbacks(0.2), timeout=10)

    run(scenario())
    assert sorted(finished) == ["quick", "s"]
    messages = [r.getMessage() for r in log_records]
    assert any("did not finish within 0.2s" in m for m in messages)
    errors = [r for r in log_records if r.levelno == logging.ERROR and r.exc_info]
    assert {str(r.exc_info[1]) for r in errors} == {"sync failure", "async failure"}


def test_stop_runs_callbacks_then_stops_the_loop() -> None:
    """sprockets.http's ``stop(io_loop, shutdown_limit, wait_timeout)``."""
    done: list[bool] = []

    async def callback(app: web.Application) -> None:
        done.append(True)

    io_loop = ioloop.IOLoop(make_current=False)
    try:
        app = make_app()
        app.on_shutdown_callbacks.append(callback)
        app.stop(io_loop, 1.0, 0.01)
        io_loop.start()  # returns once the callbacks ran
    finally:
        io_loop.close()
    assert done == [True]
    assert app.draining and not app.ready_to_serve.is_set()


def test_runner_serves_drains_and_flushes() -> None:
    events: list[str] = []
    spans = SpanRecorder()
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]

    async def scenario() -> None:
        app = make_app(shutdown_limit=2)
        app.add_divak_reporter(spans)
        runner = divak.Runner(
            app,
            before_run=[lambda a, loop: events.append("before_run")],
            on_start=[lambda a, loop: events.append("on_start")],
            shutdown=[
                lambda a: events.append(f"shutdown ready={a.ready_to_serve.is_set()}")
            ],
        )

        async def client() -> None:
            await asyncio.sleep(0)
            assert (await fetch(port, "/status")).code == 200
            assert (await fetch(port, "/hello")).body == b"hello"
            events.append("served")
            runner.stop_server()

        task = asyncio.ensure_future(client())
        await runner.serve(sockets)
        await task

    run(scenario())
    assert events == ["before_run", "on_start", "served", "shutdown ready=False"]
    assert spans.one("GET /hello", kind=SpanKind.SERVER).status.is_ok


def test_runner_start_server_and_stop_server() -> None:
    """sprockets.http's two-step API: start_server, then start the IOLoop."""
    port = free_port()
    events: list[str] = []
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = make_app(shutdown_limit=1)
        app.on_shutdown_callbacks.append(lambda a: events.append("shutdown"))
        runner = divak.Runner(app)
        runner.start_server(port)

        async def client() -> None:
            events.append(str((await fetch(port, "/hello")).code))
            runner.stop_server()

        io_loop = ioloop.IOLoop.current()
        io_loop.add_callback(client)
        io_loop.start()  # returns after the drain
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert events == ["200", "shutdown"]


def test_runner_stop_is_a_deprecated_alias_of_stop_server() -> None:
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    events: list[str] = []

    async def scenario() -> None:
        app = make_app(shutdown_limit=1)
        app.on_shutdown_callbacks.append(lambda a: events.append("shutdown"))
        runner = divak.Runner(app)

        async def client() -> None:
            events.append(str((await fetch(port, "/hello")).code))
            with pytest.warns(DeprecationWarning, match="stop_server"):
                runner.stop()

        task = asyncio.ensure_future(client())
        await asyncio.wait_for(runner.serve(sockets), 30)  # returns: it drained
        await task

    run(scenario())
    assert events == ["200", "shutdown"]


def test_runner_serves_a_plain_tornado_application() -> None:
    """No callbacks, no readiness, no spans to flush: served as it is."""

    class Plain(web.RequestHandler):
        def get(self) -> None:
            self.write("hello")

    app = web.Application([(r"/hello", Plain), (r"/status", divak.StatusHandler)])
    with pytest.raises(TypeError, match="CallbackManager"):
        divak.Runner(app, shutdown=[lambda a: None])
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    runner = divak.Runner(app)
    codes: list[int] = []

    async def scenario() -> None:
        async def client() -> None:
            codes.append((await fetch(port, "/status")).code)
            codes.append((await fetch(port, "/hello")).code)
            runner.stop_server()

        task = asyncio.ensure_future(client())
        await asyncio.wait_for(runner.serve(sockets), 30)
        await task

    run(scenario())
    assert codes == [200, 200]
    assert not runner.flush_abandoned and runner.cut_off == []


def test_divak_tornado_logger_alone_is_a_handler(
    log_records: list[logging.LogRecord],
) -> None:
    """divak-tornado 0.0.3: ``class Ping(divak.api.Logger)`` is a handler."""
    import divak.api

    class Ping(divak.api.Logger):
        def get(self) -> None:
            self.logger.info("ping")
            self.write("pong")

    class App(divak.api.Recorder):
        def __init__(self) -> None:
            super().__init__([(r"/ping", Ping)])
            self.add_divak_propagator(divak.api.RequestIdPropagator())

    async def scenario() -> httpclient.HTTPResponse:
        port = listen(App())
        return await httpclient.AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}/ping", headers={"Request-Id": "ping-1"}
        )

    response = run(scenario())
    assert response.code == 200 and response.body == b"pong"
    assert response.headers["Request-Id"] == "ping-1"
    ping = next(r for r in log_records if r.getMessage() == "ping")
    assert ping.divak_request_id == "ping-1"  # type: ignore[attr-defined]


def test_unknown_routes_answer_with_the_json_error_document(
    log_records: list[logging.LogRecord],
) -> None:
    async def scenario() -> list[httpclient.HTTPResponse]:
        app = make_app()
        port = listen(app)
        custom = Traced([], default_handler_class=Hello)
        custom_port = listen(custom)
        return [
            await fetch(port, "/nowhere"),
            await fetch(custom_port, "/nowhere"),
        ]

    default, custom = run(scenario())
    assert default.code == 404
    assert default.headers["Content-Type"].startswith("application/json")
    document = json.loads(default.body)
    assert document["message"] == "HTTP 404: Not Found"  # str(exc), as sprockets.http
    assert len(document["trace_id"]) == 32
    assert custom.code == 200 and custom.body == b"hello"  # the user's choice
    warnings = [r for r in log_records if "failed with 404" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_importing_next_to_divak_tornado_fails_clearly(tmp_path) -> None:
    """Both distributions own the ``divak`` package: say so at import."""
    import subprocess
    import sys

    info = tmp_path / "divak_tornado-0.0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: divak-tornado\nVersion: 0.0.3\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import divak"],
        env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{tmp_path}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImportError: divak cannot be imported while divak-tornado 0.0.3" in (
        result.stderr
    )
    assert "pip uninstall divak-tornado" in result.stderr
    clean = subprocess.run(
        [sys.executable, "-c", "import divak"],
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clean.returncode == 0, clean.stderr


def test_runner_awaits_start_callbacks_and_bounds_them(
    log_records: list[logging.LogRecord],
) -> None:
    events: list[str] = []
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]

    async def warm(app: web.Application, io_loop: ioloop.IOLoop) -> None:
        await asyncio.sleep(0)
        events.append("warm")

    async def hang(app: web.Application, io_loop: ioloop.IOLoop) -> None:
        events.append("hang")
        await asyncio.Event().wait()

    async def scenario() -> None:
        app = make_app(start_limit=0.2, shutdown_limit=1)
        app.before_run_callbacks.append(warm)
        app.on_start_callbacks.append(hang)
        runner = divak.Runner(app)

        async def client() -> None:
            while not any(
                "did not finish within" in r.getMessage() for r in log_records
            ):
                await asyncio.sleep(0.02)
            events.append(str((await fetch(port, "/status")).code))
            runner.stop_server()

        task = asyncio.ensure_future(client())
        await asyncio.wait_for(runner.serve(sockets), 30)
        await task

    run(scenario())
    assert events == ["warm", "hang", "503"]  # never ready: on_start was cut off
    messages = [r.getMessage() for r in log_records]
    assert any("on_start callback" in m and "0.2s" in m for m in messages)
    assert not any("was never awaited" in m for m in messages)
