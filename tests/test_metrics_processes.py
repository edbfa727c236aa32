"""Two forked children behind one port: every scrape answers the sum over both."""

from __future__ import annotations

import collections
import http.client
import pathlib
import signal
import threading
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .conftest import start_service

DURATION = "http_server_request_duration_seconds"


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def counts(text: str) -> collections.Counter:
    found: collections.Counter = collections.Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DURATION + "_count":
                labels = sample.labels
                if labels.get("http_route") == "/items/{item_id}":
                    found[labels["http_response_status_code"]] += int(sample.value)
    return found


def test_scrapes_of_two_children_are_monotonic_and_complete() -> None:
    process, port = start_service(["tests/services/metrics_service.py"])
    base = f"http://127.0.0.1:{port}"
    try:
        sent: collections.Counter = collections.Counter()
        served_by: set[str] = set()
        scraped_by: set[str] = set()
        previous: collections.Counter = collections.Counter()
        statuses = ["200", "200", "404", "500", "200"]
        # The children share one listening socket: whichever accepts first
        # serves, so it takes a few rounds until both have served and
        # answered a scrape (at least 20 rounds, at most 200).
        for scrape in range(200):
            if scrape >= 20 and len(served_by) == 2 and len(scraped_by) == 2:
                break
            for index in range(4):
                status = statuses[(scrape + index) % len(statuses)]
                code, headers, _ = get(f"{base}/items/{index}?status={status}")
                assert code == int(status)
                sent[status] += 1
                if code == 200:
                    served_by.add(headers["X-Pid"])
            code, headers, body = get(f"{base}/metrics")
            assert code == 200
            scraped_by.add(headers["X-Pid"])
            now = counts(body.decode())
            # complete: every request answered so far, whichever child served it
            assert now == sent, (scrape, now, sent)
            # monotonic: no series ever goes back
            assert all(now[key] >= value for key, value in previous.items())
            previous = now
        assert len(served_by) == 2, served_by  # both children served requests
        assert len(scraped_by) == 2, scraped_by  # and both answered scrapes
        # The sum is the service's, not one child's: target_info keeps the
        # resource attributes both children share, not their instance ids.
        [target] = [
            sample.labels
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "target_info"
        ]
        assert target["service_name"] == "metered"
        assert "service_instance_id" not in target
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stdout.read()


def test_a_sibling_that_is_gone_counts_with_its_last_saved_state() -> None:
    import asyncio
    import json
    import os
    import socket

    from divak import __version__, metrics
    from divak.metrics import peers as metrics_peers
    from divak.metrics import snapshot as metrics_export

    async def main() -> None:
        with metrics_peers.shared_directory() as directory:
            app_metrics = metrics.ApplicationMetrics("x")
            metrics_peers.join(app_metrics)
            assert app_metrics.peer is not None
            app_metrics.count_event("cache.miss", 2)
            # a sibling that saved 5 misses, then died: its socket is stale
            attributes = [
                ["divak.event.name", "cache.miss"],
                ["otel.scope.name", "divak"],
                ["otel.scope.version", __version__],
            ]
            gone = {
                "divak.events": {
                    "kind": "counter",
                    "description": "",
                    "unit": "{event}",
                    "points": {
                        json.dumps(attributes): {"attributes": attributes, "value": 5}
                    },
                }
            }
            with open(os.path.join(directory, "999999.json"), "w") as file:
                json.dump(gone, file)
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(os.path.join(directory, "999999.sock"))
            stale.close()  # bound, never listening: connecting is refused
            peers = await metrics_peers.gather(app_metrics, timeout=1.0)
            total = metrics_export.merge([metrics_export.snapshot(app_metrics), *peers])
            [point] = total["divak.events"]["points"].values()
            assert point["value"] == 7
            app_metrics.peer.server.stop()
        assert not os.path.exists(directory)
        assert metrics_peers.ENVIRONMENT_VARIABLE not in os.environ

    asyncio.run(main())


STALE = "divak_metrics_stale_processes"


def stale_processes(text: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == STALE:
                return sample.value
    return None


class Child:
    """A keep-alive connection, and so one child: every request reaches it."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.pid = self.get("/items/0")[1]["X-Pid"]

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        self.connection.request("GET", path)
        response = self.connection.getresponse()
        return response.status, dict(response.headers), response.read()

    def scrape(self) -> str:
        status, headers, body = self.get("/metrics")
        assert status == 200 and headers["X-Pid"] == self.pid
        return body.decode()


def test_a_blocked_child_counts_with_its_last_known_state_and_is_marked_stale(
    tmp_path: pathlib.Path,
) -> None:
    process, port = start_service(["tests/services/metrics_service.py"])
    release = tmp_path / "release"
    blocker: threading.Thread | None = None
    try:
        # One connection per child: the kernel spreads new connections
        # over both, a keep-alive connection stays with its child.
        children: dict[str, Child] = {}
        made = 0
        for _ in range(200):
            child = Child(port)
            made += 1
            children.setdefault(child.pid, child)
            if len(children) == 2:
                break
        assert len(children) == 2
        busy, other = children.values()
        # One /items/0 per connection made, also those that met a child twice.
        sent = collections.Counter({"200": made})
        other.scrape()  # "other" reads busy's state (busy saves it)
        for index in range(5):  # then busy serves more...
            assert busy.get(f"/items/{index}")[0] == 200
            sent["200"] += 1
        before = busy.scrape()  # ...and answers a scrape with them
        assert counts(before) == sent
        assert stale_processes(before) == 0

        # busy's IOLoop now blocks, well past the 2 s collection timeout
        blocked = threading.Event()

        def block() -> None:
            busy.connection.request("GET", f"/block?until={release}")
            response = busy.connection.getresponse()  # the headers: blocking now
            blocked.set()
            response.read()

        blocker = threading.Thread(target=block, daemon=True)
        blocker.start()
        assert blocked.wait(30)
        during = other.scrape()  # waits for busy, then does without it
        # busy's share is its last known one, not gone: nothing goes back
        assert counts(during) == sent
        assert stale_processes(during) == 1

        release.touch()
        blocker.join(30)
        after = other.scrape()
        assert counts(after) == sent
        assert stale_processes(after) == 0
    finally:
        release.touch()
        if blocker is not None:
            blocker.join(30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stdout.read()
