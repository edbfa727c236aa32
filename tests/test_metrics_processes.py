"""Two forked children behind one port: every scrape answers the sum over both."""

from __future__ import annotations

import collections
import signal
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
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stdout.read()


def test_a_sibling_that_is_gone_counts_with_its_last_saved_state() -> None:
    import asyncio
    import json
    import os
    import socket

    from divak import metrics
    from divak.metrics import peers as metrics_peers
    from divak.metrics import snapshot as metrics_export

    async def main() -> None:
        with metrics_peers.shared_directory() as directory:
            app_metrics = metrics.ApplicationMetrics("x")
            metrics_peers.join(app_metrics)
            assert app_metrics.peer is not None
            app_metrics.count_event("cache.miss", 2)
            # a sibling that saved 5 misses, then died: its socket is stale
            gone = {
                "divak.events": {
                    "kind": "counter",
                    "description": "",
                    "unit": "{event}",
                    "points": {
                        json.dumps([["divak.event.name", "cache.miss"]]): {
                            "attributes": [["divak.event.name", "cache.miss"]],
                            "value": 5,
                        }
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
