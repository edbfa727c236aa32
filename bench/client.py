"""A bounded Python load generator, used when wrk is not installed.

Usage: ``python3 bench/client.py URL SECONDS CONNECTIONS``

Opens CONNECTIONS keep-alive connections, sends GET requests back to back
on each for SECONDS, and prints one JSON line: requests per second,
requests, errors, p50 and p99 latency in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse


async def worker(
    host: str, port: int, path: str, deadline: float, latencies: list[float],
    errors: list[int],
) -> None:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 2"):
                errors[0] += 1
    except (OSError, asyncio.IncompleteReadError):
        errors[0] += 1
    finally:
        writer.close()


async def main(url: str, seconds: float, connections: int) -> None:
    parts = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.wait_for(
        asyncio.gather(
            *(
                worker(parts.hostname or "127.0.0.1", parts.port or 80,
                       parts.path or "/", deadline, latencies, errors)
                for _ in range(connections)
            )
        ),
        seconds + 30,
    )
    elapsed = time.monotonic() - start
    latencies.sort()
    count = len(latencies)

    def percentile(p: float) -> float:
        return 1000 * latencies[min(count - 1, int(count * p))] if count else 0.0

    print(json.dumps({
        "rps": count / elapsed,
        "requests": count,
        "errors": errors[0],
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
