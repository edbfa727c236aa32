"""Where each variant's CPU time per request goes, sampled with py-spy.

Run from the project root (needs ``py-spy``: ``pip install py-spy``, and
the right to trace a child process)::

    python3 bench/profiles.py                       # the divak variants and plain
    python3 bench/profiles.py --variants divak+m --duration 20
    python3 bench/run.py --json table.json && \
        python3 bench/profiles.py --cpu-from table.json --output PROFILE.rst

For each variant: the server (``bench/server.py``) starts pinned to the
first CPU and is warmed up; ``wrk`` (or ``bench/client.py``) drives it on
the second CPU for ``--duration`` seconds while nothing samples it, which
gives the CPU time per request (the server's user + system time over the
requests answered); then as long again while ``py-spy`` (on the second
CPU too) samples every thread of the server.  The samples are sorted
into the steps of a request (the first matching rule of :data:`STEPS`
wins) and into the function that was running (own time); a step's
microseconds per request are its share of the samples times the
unsampled CPU time per request, or, with ``--cpu-from``, the median CPU
time per request of a ``bench/run.py --json`` run (so that the profiles
add up to that table).  Sampling stops the process for a moment per
sample, so the profiled window is slower; only its shares are used.
With plain Tornado profiled too, each step also shows its difference to
plain Tornado's same step (what divak adds to Tornado's own work, its
access line and the handler).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402 - the benchmark's own helpers, next to this file

DEFAULT_VARIANTS = ["plain", "divak", "divak-0.1%", "divak+m", "divak-0.1%+m"]

Frame = tuple[str, str]  # (function, file)


class Sample(typing.NamedTuple):
    thread: str
    frames: tuple[Frame, ...]  # outermost first
    count: int


_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")


def parse_raw(text: str) -> list[Sample]:
    """py-spy's raw output (``--threads --nolineno --full-filenames``)."""
    samples = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        parts = stack.split(";")
        thread = parts[0].partition(": ")[2] if parts[0].startswith("thread") else ""
        frames = []
        for part in parts[1:]:
            match = _FRAME.match(part)
            if match:
                frames.append((match["function"], match["file"]))
            else:
                frames.append((part, ""))
        samples.append(Sample(thread, tuple(frames), int(count)))
    return samples


#: Leaf functions of a thread that waits (py-spy cannot tell here): a
#: lock or an event, the IOLoop's poll; another thread reading a reply.
IDLE = {
    "Condition.wait",
    "Event.wait",
    "Thread._wait_for_tstate_lock",
    "EpollSelector.select",
    "_PollLikeSelector.select",
    "BaseSelector.select",
    "SelectSelector.select",
}
IDLE_OFF_MAIN = {"SocketIO.readinto"}


def busy(samples: list[Sample]) -> list[Sample]:
    """*samples* without the ones of waiting threads."""
    kept = []
    for sample in samples:
        leaf = sample.frames[-1][0] if sample.frames else ""
        main = "MainThread" in sample.thread
        if leaf in IDLE or (leaf in IDLE_OFF_MAIN and not main):
            continue
        kept.append(sample)
    return kept


# -- rules ---------------------------------------------------------------
def _any(*names: str, file: str = "") -> typing.Callable[[Sample], bool]:
    """Some frame is one of the functions *names* (in a file containing *file*)."""
    wanted = set(names)

    def match(sample: Sample) -> bool:
        return any(
            (not names or f in wanted) and file in path for f, path in sample.frames
        )

    return match


def _leaf(*names: str, file: str = "") -> typing.Callable[[Sample], bool]:
    """The running function is one of *names* (own time)."""
    wanted = set(names)

    def match(sample: Sample) -> bool:
        if not sample.frames:
            return False
        function, path = sample.frames[-1]
        return (not names or function in wanted) and file in path

    return match


def _all(*rules: typing.Callable[[Sample], bool]) -> typing.Callable[[Sample], bool]:
    return lambda sample: all(rule(sample) for rule in rules)


def _either(
    *rules: typing.Callable[[Sample], bool],
) -> typing.Callable[[Sample], bool]:
    return lambda sample: any(rule(sample) for rule in rules)


def _thread(prefix: str) -> typing.Callable[[Sample], bool]:
    return lambda sample: sample.thread.strip('"').startswith(prefix)


def _not_main(sample: Sample) -> bool:
    return "MainThread" not in sample.thread


_START = _any("RequestPipeline._start")
#: The steps of a request, most specific first: a sample counts for the
#: first step whose rule matches it.
STEPS: list[tuple[str, typing.Callable[[Sample], bool]]] = [
    (
        "export thread (encode, send)",
        _either(
            _thread("divak-spans"),
            _all(_not_main, _any("BatchProcessor.worker", "BatchProcessor._export")),
        ),
    ),
    ("other threads", _not_main),
    (
        "metrics record",
        _any(
            "ApplicationMetrics.request_started",
            "ApplicationMetrics.request_finished",
            "_record_prepare_metrics",
            "_record_on_finish_metrics",
        ),
    ),
    (
        "access log",
        _any("log_access", "Application.log_request", "RequestHandler.log"),
    ),
    (
        "span end, queue",
        _any(
            "RequestPipeline._end_span",
            "Span.end",
            "_Span.end",
            "SpanQueue.on_end",
            "_finish_span",
        ),
    ),
    (
        "attributes",
        _either(
            _all(
                _START,
                _any(
                    "Span.set_attributes",
                    "Span.set_attribute",
                    "_Span.set_attributes",
                    "server_attributes",
                    "captured_headers",
                    "CapturedHeaders.request_attributes",
                ),
            ),
            _any("_get_attributes_from_request"),
        ),
    ),
    (
        "sampling again (SDK start_span)",
        _all(
            _any("Tracer.start_span"),
            _any(
                "PropagatedSampler.should_sample",
                "ParentBased.should_sample",
                "TraceIdRatioBased.should_sample",
                "StaticSampler.should_sample",
            ),
        ),
    ),
    ("sampling, ids (first decision)", _any("unsampled_span")),
    (
        "span start (SDK)",
        _any("Tracer.start_span", "_start_internal_or_server_span"),
    ),
    (
        "extract",
        _either(_any("Instrumentation.extract"), _any(file="divak/propagation/")),
    ),
    ("request context", _START),
    (
        "context attach/detach",
        _either(
            _any("activated.__enter__", "activated.__exit__", "attach", "detach"),
            _leaf("RequestPipeline._creating_handler_task"),
            _any("use_span", "_start_span"),
        ),
    ),
    (
        "glue: delegates, transforms, prepare",
        _either(
            _leaf(file="divak/"),
            _any(
                "Recorder._divak_transform",
                "Logger.prepare",
                "_ResponseHeaders.transform_first_chunk",
                "_ServerHeader.transform_first_chunk",
                "_ServerHeader.set_header",
                "DrainingHTTPServer._response_headers",
                "DrainingHTTPServer._request_arrived",
                "Recorder.find_handler",
                "_CloseWhileDraining.transform_first_chunk",
                "_CloseWhileDraining.__call__",
                "_InFlightRequests.__call__",
                "RequestPipeline.response_finished",
                "RequestPipeline._handler_task_done",
                "RequestPipeline._release",
                "_ServerHeader.__call__",
            ),
        ),
    ),
    ("handler (get)", _any("Hello.get")),
    ("OpenTelemetry instrumentation, other", _any(file="instrumentation/tornado")),
    ("Tornado, asyncio, kernel", lambda sample: True),
]


def step_of(sample: Sample) -> str:
    for name, rule in STEPS:
        if rule(sample):
            return name
    return "Tornado, asyncio, kernel"


def short(path: str) -> str:
    """A file path from its package on: ``tornado/web.py``, ``divak/context.py``."""
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = path.split("/", 1)[1] if "/" in path else path
            return path
    for marker in ("/divak/", "/bench/"):
        if marker in path:
            return marker[1:] + path.split(marker, 1)[1]
    return path


# -- measuring -----------------------------------------------------------
def profile_variant(
    variant: str, zipkin: str, duration: float, rate: int, connections: int,
    log_dir: pathlib.Path, raw_dir: pathlib.Path | None = None,
) -> dict[str, typing.Any]:
    port = run.free_port()
    stem = variant.replace("/", "_")
    log_file = log_dir / f"{stem}.log"
    raw = (raw_dir or log_dir) / f"{stem}.raw"
    env = {**os.environ, "PYTHONPATH": str(run.ROOT)}
    server = subprocess.Popen(
        [*run.pin(0), sys.executable, str(HERE / "server.py"), variant, str(port),
         zipkin, str(log_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        run.wait_ready(port, server)
        run.load(port, 1, connections)
        before = run.process_cpu(server.pid)
        unprofiled = run.load(port, duration, connections)
        after = run.process_cpu(server.pid)
        assert before is not None and after is not None, "needs /proc"
        cpu_us = 1e6 * (after - before) / unprofiled["requests"]
        spy = subprocess.Popen(
            [*run.pin(1), "py-spy", "record", "--pid", str(server.pid),
             "--threads", "--nolineno", "--full-filenames", "--rate", str(rate),
             "--duration", str(int(duration)), "--format", "raw", "--output",
             str(raw)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        profiled = run.load(port, duration, connections)
        spy_output = spy.communicate(timeout=duration + 60)[0]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    samples = parse_raw(raw.read_text())
    return {
        "variant": variant,
        "cpu_us": cpu_us,
        "rps": unprofiled["rps"],
        "profiled_rps": profiled["rps"],
        "samples": samples,
        "spy": spy_output.strip().splitlines()[-2:],
    }


def step_times(result: dict[str, typing.Any]) -> dict[str, float]:
    """µs per request of each step of *result*."""
    samples = busy(result["samples"])
    total = sum(s.count for s in samples) or 1
    steps: collections.Counter[str] = collections.Counter()
    for sample in samples:
        steps[step_of(sample)] += sample.count
    return {name: result["cpu_us"] * count / total for name, count in steps.items()}


def report(
    result: dict[str, typing.Any], top: int, plain: dict[str, float] | None = None
) -> str:
    every: list[Sample] = result["samples"]
    samples = busy(every)
    total = sum(s.count for s in samples) or 1
    idle = sum(s.count for s in every) - total
    cpu_us = result["cpu_us"]
    own: collections.Counter[Frame] = collections.Counter()
    for sample in samples:
        if sample.frames:
            function, path = sample.frames[-1]
            own[(function, short(path))] += sample.count
    lines = [
        result["variant"],
        "-" * len(result["variant"]),
        "",
        f"{cpu_us:.0f} CPU µs per request ({result['cpu_source']}); "
        f"{total} samples of busy threads ({idle} of waiting ones left out)"
        + (
            f" at {result['profiled_rps']:.0f} req/s while sampled."
            if result["profiled_rps"]
            else "."
        ),
        "",
    ]
    times = step_times(result)
    rows = []
    for name, micros in sorted(times.items(), key=lambda item: -item[1]):
        row = [name, f"{100 * micros / cpu_us:.1f}", f"{micros:.1f}"]
        if plain is not None:
            row.append(f"{micros - plain.get(name, 0.0):+.1f}")
        rows.append(row)
    if plain is not None:
        for name in plain.keys() - times.keys():
            rows.append([name, "0.0", "0.0", f"{-plain[name]:+.1f}"])
        rows.append(["total", "100.0", f"{cpu_us:.1f}",
                     f"{cpu_us - sum(plain.values()):+.1f}"])
    headers = ["step", "share %", "µs/request"]
    lines.append(run.table(headers + (["vs plain"] if plain else []), rows))
    lines += ["", f"Top {top} functions by own time:", ""]
    rows = [
        [function, path, f"{100 * count / total:.1f}", f"{cpu_us * count / total:.1f}"]
        for (function, path), count in own.most_common(top)
    ]
    lines.append(run.table(["function", "file", "share %", "µs/request"], rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds")
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--output", help="write the report here too (reST)")
    parser.add_argument(
        "--raw-dir", help="keep py-spy's samples and the figures here"
    )
    parser.add_argument(
        "--from-raw", metavar="DIR",
        help="measure nothing: report the samples an earlier --raw-dir kept",
    )
    parser.add_argument(
        "--cpu-from", metavar="JSON",
        help="CPU µs per request from this bench/run.py --json output",
    )
    parser.add_argument(
        "--max-busy", type=float, default=None, metavar="PERCENT",
        help="wait until other processes use less than PERCENT of the machine",
    )
    parser.add_argument(
        "--client", choices=["wrk", "python"], default=run.LOAD_GENERATOR,
        help="load generator (default: wrk when installed)",
    )
    args = parser.parse_args()
    run.LOAD_GENERATOR = args.client
    if args.from_raw is None and shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    measured: dict[str, float] = {}
    if args.cpu_from:
        for variant, runs in json.loads(
            pathlib.Path(args.cpu_from).read_text()
        )["results"].items():
            measured[variant] = statistics.median(r["cpu_us"] for r in runs)
    header = [
        "Profiles",
        "========",
        "",
        f"``bench/profiles.py``: {args.duration:.0f} s per variant, py-spy at "
        f"{args.rate} Hz, {args.connections} connections, "
        f"{time.strftime('%Y-%m-%d')}, load average {run.load_average()} at the "
        "start.  Machine: " + run.machine() + ".  " + run.versions() + ".",
        "",
    ]
    parts: list[str] = []
    plain: dict[str, float] | None = None
    collector = None if args.from_raw else run.Collector()
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            if collector is None:
                result = stored(pathlib.Path(args.from_raw), variant)
            else:
                if args.max_busy is not None:
                    run.wait_until_quiet(args.max_busy, 300)
                raw_dir = pathlib.Path(args.raw_dir) if args.raw_dir else None
                result = profile_variant(
                    variant, collector.url, args.duration, args.rate,
                    args.connections, pathlib.Path(tmp), raw_dir,
                )
                print(" ".join(result.pop("spy")), file=sys.stderr, flush=True)
                if raw_dir is not None:
                    figures = {k: v for k, v in result.items() if k != "samples"}
                    stem = variant.replace("/", "_")
                    (raw_dir / f"{stem}.json").write_text(json.dumps(figures))
            result["cpu_source"] = f"unsampled, at {result['rps']:.0f} req/s"
            if variant in measured:
                result["cpu_us"] = measured[variant]
                result["cpu_source"] = "the median of the benchmark's rounds"
            text = report(result, args.top, plain)
            if variant == "plain":
                plain = step_times(result)
            print(text, flush=True)
            parts.append(text)
    header[-2] += f"  Load average at the end: {run.load_average()}."
    if args.output:
        pathlib.Path(args.output).write_text("\n".join(header + parts))


def stored(directory: pathlib.Path, variant: str) -> dict[str, typing.Any]:
    """A variant's samples and figures as ``--raw-dir`` kept them."""
    stem = variant.replace("/", "_")
    figures_file = directory / f"{stem}.json"
    figures: dict[str, typing.Any] = (
        json.loads(figures_file.read_text())
        if figures_file.exists()
        else {"variant": variant, "cpu_us": 0.0, "rps": 0.0, "profiled_rps": 0.0}
    )
    figures["samples"] = parse_raw((directory / f"{stem}.raw").read_text())
    return figures


if __name__ == "__main__":
    main()
