"""What divak costs a WebSocket message: echo round trips, CPU time per message.

Run from the project root::

    python3 bench/websocket.py                     # 5 rounds of 20,000 messages
    python3 bench/websocket.py --messages 50000 --rounds 7

Each variant serves an echo ``WebSocketHandler`` (``on_message`` writes
the message back) on 127.0.0.1 in this process; a client on the same
IOLoop opens one connection and sends the messages in batches of 500,
reading every echo.  A round measures the process's CPU time
(:func:`time.process_time`: server, client and the span export thread)
for all its messages; variants are interleaved round by round and the
table shows the median per message and the difference to plain Tornado,
which is what divak adds (the client's share is the same in every
variant).

``--micro`` measures the handler call alone instead: on an open
connection whose ``on_message`` does nothing, it calls the handler's
``on_message`` (divak's wrapper, then the handler's own) and, for
reference, the handler's own method directly, in batches of 1,000
followed by a flush of the finished spans, so the CPU time includes
exporting them.

Variants: ``plain`` (a Tornado application), ``divak`` (a
:class:`divak.Recorder` application, metrics on, the connection's span
sampled, no message spans), ``divak-unsampled`` (the connection not
sampled), ``divak+spans`` (``divak_websocket_message_spans`` on: a span
per message, exported to a reporter that discards them).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import statistics
import time
import typing

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from tornado import httpserver, netutil, web, websocket

import divak

BATCH = 500


class Echo(websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


class Nothing(websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        pass


class Discard(SpanExporter):
    """A reporter that accepts every span and keeps none."""

    def export(self, spans: typing.Sequence[typing.Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Traced(divak.Recorder, divak.ProbabilisticSampler, divak.Application):
    pass


def application(variant: str) -> web.Application:
    routes = [(r"/ws/(?P<room>\w+)", Echo), (r"/nothing/(?P<room>\w+)", Nothing)]
    if variant == "plain":
        return web.Application(routes)
    app = Traced(
        routes, divak_websocket_message_spans=variant == "divak+spans"
    )
    app.add_divak_reporter(Discard())
    app.set_divak_sample_probability(0.0 if variant == "divak-unsampled" else 1.0)
    return app


async def one_round(port: int, messages: int) -> float:
    """CPU seconds for *messages* echoes over one connection."""
    connection = await websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws/bench")
    started = time.process_time()
    sent = 0
    while sent < messages:
        batch = min(BATCH, messages - sent)
        for _ in range(batch):
            connection.write_message("hello, room")
        for _ in range(batch):
            assert await connection.read_message() == "hello, room"
        sent += batch
    used = time.process_time() - started
    connection.close(1000)
    return used


async def main(messages: int, rounds: int, variants: list[str]) -> None:
    servers = {}
    for variant in variants:
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server = httpserver.HTTPServer(application(variant))
        server.add_sockets(sockets)
        servers[variant] = (server, sockets[0].getsockname()[1])
    for _, port in servers.values():  # warm up
        await one_round(port, 2000)
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            seconds = await one_round(servers[variant][1], messages)
            results[variant].append(seconds / messages * 1e6)
    plain = statistics.median(results["plain"]) if "plain" in results else None
    print(f"{messages} messages x {rounds} rounds, CPU microseconds per message")
    print(f"{'variant':<18}{'median':>8}{'min':>8}{'max':>8}{'+plain':>8}")
    for variant in variants:
        values = results[variant]
        median = statistics.median(values)
        extra = f"{median - plain:8.1f}" if plain is not None else ""
        print(
            f"{variant:<18}{median:8.1f}{min(values):8.1f}{max(values):8.1f}{extra}"
        )
    for server, _ in servers.values():
        server.stop()
    for variant in variants:
        if variant != "plain":
            app = servers[variant][0].request_callback
            assert isinstance(app, divak.Recorder)
            app.divak_shutdown()


async def micro(calls: int, rounds: int, variants: list[str]) -> None:
    results: dict[str, list[float]] = {}
    for variant in variants:
        if variant == "plain":
            continue
        app = application(variant)
        assert isinstance(app, Traced)
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        server = httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        client = await websocket.websocket_connect(f"ws://127.0.0.1:{port}/nothing/b")
        await asyncio.sleep(0.1)
        (connection,) = list(app.divak_websockets)
        handler = connection.handler
        for name, call in (
            (variant, handler.on_message),
            ("handler alone", functools.partial(Nothing.on_message, handler)),
        ):
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(calls // 1000):
                    for _ in range(1000):
                        call("hello, room")
                    app.divak_force_flush()
                used = time.process_time() - started
                results.setdefault(name, []).append(used / calls * 1e6)
        client.close(1000)
        server.stop()
        app.divak_shutdown()
    print(f"{calls} calls x {rounds} rounds, CPU microseconds per on_message call")
    alone = statistics.median(results["handler alone"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:8.2f}{median - alone:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["plain", "divak", "divak-unsampled", "divak+spans"],
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if arguments.micro:
        asyncio.run(micro(arguments.messages, arguments.rounds, arguments.variants))
    else:
        asyncio.run(main(arguments.messages, arguments.rounds, arguments.variants))
