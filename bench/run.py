"""Benchmark divak against plain Tornado and OpenTelemetry's instrumentation.

Run from the project root::

    python3 bench/run.py                 # the comparison table, 3 rounds
    python3 bench/run.py --rounds 8      # more rounds, steadier medians
    python3 bench/run.py --exporter      # collector up / down / slow

Each variant runs as its own server process (``bench/server.py``) on
127.0.0.1, pinned to the first CPU when the machine has two or more; the
load comes from ``wrk`` on another CPU when it is installed, else from a
bounded Python client (``bench/client.py``) in its own process.  Variants
are interleaved round by round and the table shows medians over rounds,
with throughput as a ratio to plain Tornado, and CPU time per request as
a difference to plain Tornado's, measured in the same round.  The CPU time
is the server process's own (user + system, all its threads, from
``/proc/PID/stat``) over the measured window, divided by the requests
answered in it.  Spans go to a counting Zipkin endpoint in this process.

The machine may be shared: for each measurement the table gives the share
of both CPUs that other processes used meanwhile ("others %"), and the
run prints the load average before and after.  ``--max-busy`` waits for a
quieter machine before each measurement, and measures again when other
processes used more than that share meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing
import urllib.request

from tornado import httpserver, netutil, web

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_VARIANTS = [
    "plain",
    "divak",
    "divak-0.1%",
    "divak+m",
    "divak-0.1%+m",
    "otel",
    "otel-0.1%",
    "otel+m",
    "otel-0.1%+m",
]


# -- a Zipkin endpoint that only counts -----------------------------------
class _Spans(web.RequestHandler):
    def initialize(self, collector: Collector) -> None:
        self.collector = collector

    async def post(self) -> None:
        if self.collector.delay:
            await asyncio.sleep(self.collector.delay)
        self.collector.received += len(json.loads(self.request.body))
        self.set_status(202)


class Collector:
    """Counts the spans POSTed to ``/api/v2/spans``; optionally answers late."""

    def __init__(self) -> None:
        self.received = 0
        self.delay = 0.0
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = web.Application([(r"/api/v2/spans", _Spans, {"collector": self})])
            httpserver.HTTPServer(app).add_sockets(sockets)
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2/spans"


# -- processes ------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def wait_ready(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


LOAD_GENERATOR = "wrk" if shutil.which("wrk") else "python"


# -- CPU time -------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """Seconds of CPU (user + system, every thread) process *pid* used so far.

    :data:`None` where ``/proc`` is not available.
    """
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs."""
    try:
        line = pathlib.Path("/proc/stat").read_text().splitlines()[0]
    except OSError:
        return None
    values = [int(v) for v in line.split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


def own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (wrk)."""
    import resource

    seconds = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        seconds += usage.ru_utime + usage.ru_stime
    return seconds


def load_average() -> str:
    try:
        return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def wait_until_quiet(max_busy: float, patience: float) -> float:
    """Wait up to *patience* seconds for other processes to use less than
    *max_busy* percent of the machine (measured over one second); return
    the last share measured."""
    deadline = time.monotonic() + patience
    while True:
        before = machine_cpu()
        time.sleep(1.0)
        after = machine_cpu()
        if before is None or after is None:
            return 0.0
        busy = 100 * (after[0] - before[0]) / max(after[1] - before[1], 1e-9)
        if busy < max_busy or time.monotonic() > deadline:
            return busy
        print(f"machine {busy:.0f}% busy, waiting", file=sys.stderr, flush=True)


def load(port: int, duration: float, connections: int) -> dict[str, float]:
    """Drive the server for *duration* seconds; return throughput and latency."""
    url = f"http://127.0.0.1:{port}/"
    if LOAD_GENERATOR == "wrk":
        command = [
            *pin(1),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(duration)}s",
            "--latency",
            url,
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True
        ).stdout
        return parse_wrk(output)
    command = [
        *pin(1),
        sys.executable,
        str(HERE / "client.py"),
        url,
        str(duration),
        str(connections),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(output.stdout)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    result: dict[str, float] = {"errors": 0}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    result["requests"] = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        match = re.search(rf"^\s*{label}\s+(\S+)\s*$", output, re.MULTILINE)
        result[key] = _ms(match.group(1))  # type: ignore[union-attr]
    for match in re.finditer(r"(connect|read|write|timeout) (\d+)", output):
        result["errors"] += int(match.group(2))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        result["errors"] += int(non_2xx.group(1))
    return result


def run_variant(
    variant: str,
    zipkin: str,
    collector: Collector,
    duration: float,
    connections: int,
    log_dir: pathlib.Path,
) -> dict[str, typing.Any]:
    """Start *variant*, warm it up, measure, stop it; return the figures."""
    port = free_port()
    handle, name = tempfile.mkstemp(
        prefix=variant.replace("/", "_") + "-", suffix=".log", dir=log_dir
    )
    os.close(handle)
    log_file = pathlib.Path(name)
    before = collector.received
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [*pin(0), sys.executable, str(HERE / "server.py"), variant, str(port), zipkin,
         str(log_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready(port, server)
        load(port, 1, connections)  # warm-up
        cpu_before, machine_before = process_cpu(server.pid), machine_cpu()
        own_before = own_cpu()
        window = time.monotonic()
        result = load(port, duration, connections)
        window_end = time.monotonic()
        cpu_after, machine_after = process_cpu(server.pid), machine_cpu()
        own = own_cpu() - own_before
        if cpu_before is not None and cpu_after is not None and result["requests"]:
            server_cpu = cpu_after - cpu_before
            result["cpu_us"] = 1e6 * server_cpu / result["requests"]
            if machine_before is not None and machine_after is not None:
                busy = machine_after[0] - machine_before[0]
                total = machine_after[1] - machine_before[1]
                result["others_pct"] = max(
                    0.0, 100 * (busy - server_cpu - own) / max(total, 1e-9)
                )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            stdout, stderr = server.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{variant} printed no figures: {stderr[-2000:]}")
    result.update(json.loads(lines[-1]))
    # Full collections during the measured window only (not start-up's).
    full = [
        seconds
        for generation, started, seconds in result.pop("gc_pauses", ())
        if generation == 2 and window <= started <= window_end
    ]
    result["gc2_count"] = len(full)
    result["gc2_max_ms"] = 1000 * max(full, default=0.0)
    time.sleep(0.3 + collector.delay)  # the last upload may still be on its way
    result["spans"] = collector.received - before
    text = log_file.read_text(errors="replace")
    result["warnings"] = sum(
        1
        for line in text.splitlines()
        if (" WARNING " in line or " ERROR " in line) and "tornado.access" not in line
    )
    result["log_lines"] = text.count("\n")
    return result


# -- reports --------------------------------------------------------------
def versions() -> str:
    from importlib import metadata

    names = [
        "tornado",
        "opentelemetry-sdk",
        "opentelemetry-exporter-zipkin-json",
        "opentelemetry-instrumentation-tornado",
    ]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {cpu}, {platform.system()} {platform.release()}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """An reStructuredText simple table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append(rule)
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    lines.append(rule)
    return "\n".join(lines)


def median(results: list[dict[str, typing.Any]], key: str) -> float:
    return statistics.median(r.get(key, 0) for r in results)


def median_of(values: list[float], fmt: str) -> str:
    return format(statistics.median(values), fmt) if values else "-"


def measure(
    variant: str, collector: Collector, args: argparse.Namespace, tmp: pathlib.Path
) -> dict[str, typing.Any]:
    """One measurement of *variant*; with ``--max-busy``, on a quiet machine.

    With ``--max-busy`` it waits for a quiet machine first, and measures
    again (up to ``--retries`` times) when other processes used more than
    that share of the machine meanwhile.
    """
    for attempt in range(args.retries + 1):
        if args.max_busy is not None:
            wait_until_quiet(args.max_busy, args.patience)
        figures = run_variant(
            variant, collector.url, collector, args.duration, args.connections, tmp
        )
        figures["load_average"] = load_average()
        figures["attempts"] = attempt + 1
        others = figures.get("others_pct", 0.0)
        if args.max_busy is None or others <= args.max_busy:
            break
        print(
            f"{variant}: other processes used {others:.0f}% of the machine, "
            f"{'measuring again' if attempt < args.retries else 'keeping it'}",
            file=sys.stderr,
            flush=True,
        )
    return figures


#: Columns of the comparison table.
COLUMNS = [
    "variant", "req/s", "ratio", "CPU µs/req", "Δ µs", "p50 ms", "p99 ms",
    "p99/p50", "RSS MiB", "spans/served", "others %", "errors",
]
#: More columns with --gc: full collections during the measured window,
#: the longest, and one more at the end, timed alone.
GC_COLUMNS = ["full GCs", "max ms", "full GC ms"]


def compare(args: argparse.Namespace) -> None:
    collector = Collector()
    variants = args.variants
    results: dict[str, list[dict[str, typing.Any]]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    deltas: dict[str, list[float]] = {v: [] for v in variants}
    loads = [load_average()]
    print(f"load average before: {loads[0]}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            for variant in variants:
                figures = measure(variant, collector, args, pathlib.Path(tmp))
                results[variant].append(figures)
                print(
                    f"round {number + 1} {variant:<12} {figures['rps']:8.0f} req/s"
                    f"  {figures.get('cpu_us', 0):6.1f} CPU µs/req"
                    f"  p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms"
                    f"  others {figures.get('others_pct', 0):.0f}%"
                    f"  load {figures['load_average']}",
                    file=sys.stderr,
                    flush=True,
                )
            if "plain" in variants:
                plain = results["plain"][-1]
                for variant in variants:
                    current = results[variant][-1]
                    ratios[variant].append(current["rps"] / plain["rps"])
                    if "cpu_us" in current and "cpu_us" in plain:
                        deltas[variant].append(current["cpu_us"] - plain["cpu_us"])
    loads.append(load_average())
    rows = []
    for variant in variants:
        runs = results[variant]
        served = sum(r["served"] for r in runs)
        spans = sum(r["spans"] for r in runs)
        cpu = [r["cpu_us"] for r in runs if "cpu_us" in r]
        others = [r["others_pct"] for r in runs if "others_pct" in r]
        row = [
            variant,
            f"{median(runs, 'rps'):.0f}",
            median_of(ratios[variant], ".2f"),
            median_of(cpu, ".0f"),
            median_of(deltas[variant], "+.0f"),
            f"{median(runs, 'p50_ms'):.2f}",
            f"{median(runs, 'p99_ms'):.2f}",
            median_of([r["p99_ms"] / r["p50_ms"] for r in runs if r["p50_ms"]], ".2f"),
            f"{median(runs, 'maxrss_kib') / 1024:.0f}",
            f"{spans}/{served}",
            median_of(others, ".0f"),
            f"{sum(r['errors'] for r in runs)}",
        ]
        if args.gc:
            row += [
                f"{median(runs, 'gc2_count'):.0f}",
                f"{max(r.get('gc2_max_ms', 0) for r in runs):.1f}",
                f"{median(runs, 'gc_full_ms'):.1f}",
            ]
        rows.append(row)
    print()
    print(f"{args.rounds} interleaved rounds of {args.duration:.0f} s, "
          f"{args.connections} connections, load from "
          f"{'wrk' if LOAD_GENERATOR == 'wrk' else 'bench/client.py'}")
    print(f"Machine: {machine()}; load average {loads[0]} before, {loads[1]} after")
    print(f"Versions: {versions()}")
    print(f"Date: {time.strftime('%Y-%m-%d')}")
    print()
    print(table(COLUMNS + (GC_COLUMNS if args.gc else []), rows))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "rounds": args.rounds,
            "duration": args.duration,
            "connections": args.connections,
            "load_average": loads,
            "machine": machine(),
            "versions": versions(),
            "results": results,
            "ratios": ratios,
            "deltas": deltas,
        }, indent=1))


def exporter(args: argparse.Namespace) -> None:
    """divak at 100 %: collector up, down (nothing listening), slow."""
    collector = Collector()
    down = f"http://127.0.0.1:{free_port()}/api/v2/spans"
    scenarios = args.scenarios
    results: dict[str, list[dict[str, typing.Any]]] = {s: [] for s in scenarios}
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            for scenario in scenarios:
                collector.delay = args.slow if scenario == "slow" else 0.0
                figures = run_variant(
                    "divak", down if scenario == "down" else collector.url,
                    collector, args.duration, args.connections, pathlib.Path(tmp),
                )
                results[scenario].append(figures)
                print(
                    f"round {number + 1} collector {scenario:<5}"
                    f" {figures['rps']:8.0f} req/s {figures}",
                    file=sys.stderr,
                    flush=True,
                )
    collector.delay = 0.0
    up_rps = median(results["up"], "rps") if "up" in results else float("nan")
    up_rss = median(results["up"], "maxrss_kib") if "up" in results else 0
    rows = []
    for scenario in scenarios:
        runs = results[scenario]
        dropped = median(runs, "dropped_spans") + median(runs, "failed_spans")
        rss = median(runs, "maxrss_kib")
        growth = (
            f"{(rss - up_rss) / 1024 / dropped * 100_000:.1f}"
            if dropped and scenario != "up"
            else "-"
        )
        rows.append([
            scenario,
            f"{median(runs, 'rps'):.0f}",
            f"{median(runs, 'rps') / up_rps:.3f}",
            f"{median(runs, 'p99_ms'):.2f}",
            f"{rss / 1024:.0f}",
            f"{median(runs, 'served'):.0f}",
            f"{median(runs, 'spans'):.0f}",
            f"{median(runs, 'dropped_spans'):.0f}",
            f"{median(runs, 'failed_spans'):.0f}",
            growth,
            f"{median(runs, 'warnings'):.0f}",
            f"{sum(r['errors'] for r in runs)}",
        ])
    print()
    print(f"divak at 100 % sampling, {args.rounds} interleaved rounds of "
          f"{args.duration:.0f} s, slow collector answers after {args.slow:.0f} s")
    print(f"Machine: {machine()}")
    print(f"Versions: {versions()}")
    print()
    print(table(
        ["collector", "req/s", "ratio", "p99 ms", "RSS MiB", "served", "received",
         "dropped", "failed", "MiB/100k", "warnings", "errors"],
        rows,
    ))


def main() -> None:
    global LOAD_GENERATOR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument(
        "--exporter", action="store_true", help="collector up/down/slow instead"
    )
    parser.add_argument("--slow", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--scenarios", nargs="+", default=["up", "down", "slow"],
        help="with --exporter: which collector states to run",
    )
    parser.add_argument(
        "--client", choices=["wrk", "python"], default=LOAD_GENERATOR,
        help="load generator (default: wrk when installed)",
    )
    parser.add_argument(
        "--gc", action="store_true",
        help="time the servers' garbage collections (adds three columns)",
    )
    parser.add_argument(
        "--max-busy", type=float, default=None, metavar="PERCENT",
        help="before each measurement, wait until other processes use less "
        "than PERCENT of the machine",
    )
    parser.add_argument(
        "--patience", type=float, default=120.0,
        help="seconds to wait for a quiet machine at most (with --max-busy)",
    )
    parser.add_argument(
        "--retries", type=int, default=3,
        help="with --max-busy: measurements made again when the machine was "
        "busier than that meanwhile",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument(
        "--settings", metavar="JSON",
        help='more settings for the divak applications, e.g. \'{"gc_freeze": false}\'',
    )
    args = parser.parse_args()
    LOAD_GENERATOR = args.client
    if args.gc:
        os.environ["BENCH_GC_PAUSES"] = "1"
    if args.settings:
        json.loads(args.settings)  # fail here rather than in every server
        os.environ["BENCH_SETTINGS"] = args.settings
    if args.exporter:
        exporter(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
