"""Process and runtime metrics, the IOLoop lag: a real MeterProvider, real scrapes."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from divak.metrics.runtime import IOLOOP_LAG, RuntimeMetrics
from tests.conftest import listen, run
from tests.services.metrics_service import Application
from tests.test_metrics import fetch, scrape


def collect(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    return {
        metric.name: list(metric.data.data_points)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


def test_process_and_gc_metrics_are_observed_at_collection() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    RuntimeMetrics(provider.get_meter("test"))
    gc.collect()
    points = collect(reader)
    cpu = {p.attributes["cpu.mode"]: p.value for p in points["process.cpu.time"]}
    assert set(cpu) == {"user", "system"} and cpu["user"] > 0
    [resident] = points["process.memory.usage"]
    [virtual] = points["process.memory.virtual"]
    assert 1 << 20 < resident.value <= virtual.value
    [descriptors] = points["process.unix.file_descriptor.count"]
    assert descriptors.value >= 3  # stdin, stdout, stderr at least
    [threads] = points["process.thread.count"]
    assert threads.value >= 1
    collections = {
        p.attributes["cpython.gc.generation"]: p.value
        for p in points["cpython.gc.collections"]
    }
    assert set(collections) == {0, 1, 2} and collections[2] >= 1
    provider.shutdown()


def test_ioloop_lag_records_how_long_the_loop_was_blocked() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    runtime = RuntimeMetrics(provider.get_meter("test"), lag_interval=0.05)

    async def main() -> None:
        runtime.start()
        await asyncio.sleep(0.3)  # a few on-time probes
        time.sleep(0.4)  # a handler blocking the loop
        await asyncio.sleep(0.2)
        runtime.stop()

    run(main())
    [lag] = collect(reader)[IOLOOP_LAG]
    assert lag.count >= 3
    assert lag.max >= 0.3  # the blocked probe ran at least that late
    assert lag.min < 0.05  # the others ran about on time
    provider.shutdown()


# -- wired into every application, over real sockets ---------------------------
def lag_buckets(families: dict) -> tuple[dict[str, float], float]:
    name = "divak_ioloop_lag_seconds"
    buckets = {
        s.labels["le"]: s.value
        for s in families[name].samples
        if s.name == name + "_bucket"
    }
    [count] = [s.value for s in families[name].samples if s.name == name + "_count"]
    return buckets, count


def test_a_scrape_shows_process_runtime_and_ioloop_lag(tmp_path) -> None:
    async def main() -> None:
        app = Application()
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200  # metrics made now
        await asyncio.sleep(1.2)  # a couple of probes, on time
        released = tmp_path / "released"
        timer = threading.Timer(1.0, released.touch)
        timer.start()
        # A handler that blocks the IOLoop for a second (the test's own
        # client waits on the same IOLoop: it is blocked too).
        response = await fetch(port, f"/block?until={released}")
        assert response.code == 200
        await asyncio.sleep(1.2)  # the late probe is recorded, then on time again
        families = await scrape(port)
        for name in (
            "process_cpu_time_seconds",
            "process_memory_usage_bytes",
            "process_memory_virtual_bytes",
            "process_unix_file_descriptor_count",
            "process_thread_count",
            "cpython_gc_collections",
            "cpython_gc_collected_objects",
        ):
            assert families[name].samples, name
        cpu = {
            s.labels["cpu_mode"]: s.value
            for s in families["process_cpu_time_seconds"].samples
        }
        assert cpu["user"] > 0 and "system" in cpu
        buckets, count = lag_buckets(families)
        assert buckets["0.1"] >= 2  # probes that ran on time
        assert buckets["0.25"] < count  # the one the blocking handler delayed

    run(main())


def test_runtime_metrics_can_be_switched_off() -> None:
    async def main() -> None:
        app = Application(runtime_metrics=False)
        port = listen(app)
        assert (await fetch(port, "/items/1")).code == 200
        families = await scrape(port)
        assert "http_server_request_duration_seconds" in families
        assert not [name for name in families if name.startswith("process_")]
        assert "divak_ioloop_lag_seconds" not in families
        assert app.divak_metrics.runtime is None

    run(main())
