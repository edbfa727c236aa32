"""Process and runtime metrics and the IOLoop's lag, through a real MeterProvider."""

from __future__ import annotations

import asyncio
import gc
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from divak.metrics.runtime import IOLOOP_LAG, RuntimeMetrics
from tests.conftest import run


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
