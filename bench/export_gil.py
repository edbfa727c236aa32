"""How long encoding a batch of spans keeps another thread from running.

Run from the project root::

    python3 bench/export_gil.py               # 512 spans, 15 rounds
    python3 bench/export_gil.py --spans 2048 --rounds 30

The export thread encodes a batch as Zipkin JSON while holding the
interpreter (the GIL); the IOLoop thread waits meanwhile.  This encodes
real SERVER spans of the benchmark's application (as ``bench/hotpath.py``
makes them) on the main thread while a second thread, standing in for the
IOLoop, sleeps 0.2 ms at a time and records the longest gap between two
of its wake-ups.  With the default switch interval (5 ms) it compares:

``whole``
   the batch encoded and serialised in one piece (what
   :meth:`~divak.export.zipkin_json.ZipkinV2Encoder.serialize` did before
   it worked in slices);
``sliced``
   ``serialize`` itself: :data:`~divak.export.zipkin_json.SLICE_SPANS`
   spans at a time, the interpreter released between slices;
``idle``
   no encoding at all: the noise floor of the measurement.

It prints the CPU µs per span of encoding (this thread's CPU time, best of
several repeats), and per variant the median and largest over the rounds
of the longest gap in milliseconds, and of the most spans encoded between
two wake-ups (which, times the µs per span, is the longest hold in CPU
time, whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import threading
import time
import typing

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import hotpath  # noqa: E402 - bench/hotpath.py: real spans, CPU timings

from divak.export import zipkin_json  # noqa: E402


class Counting(zipkin_json.ZipkinV2Encoder):
    """The encoder, counting the spans it has encoded."""

    encoded = 0

    def encode_span(self, span: typing.Any) -> dict[str, typing.Any]:
        self.encoded += 1
        return super().encode_span(span)


def whole(encoder: zipkin_json.ZipkinV2Encoder, spans: list[typing.Any]) -> bytes:
    return zipkin_json.dumps([encoder.encode_span(span) for span in spans])


def sliced(encoder: zipkin_json.ZipkinV2Encoder, spans: list[typing.Any]) -> bytes:
    return encoder.serialize(spans)


def idle(encoder: zipkin_json.ZipkinV2Encoder, spans: list[typing.Any]) -> bytes:
    time.sleep(0.005)
    return b""


def one_round(
    encode: typing.Callable[..., bytes], encoder: Counting, spans: list[typing.Any]
) -> tuple[float, int]:
    """(longest gap in ms, most spans encoded between two wake-ups)."""
    stop = threading.Event()
    ready = threading.Event()
    found: list[tuple[float, int]] = []

    def waiting() -> None:  # the IOLoop: wakes up often, needs the interpreter
        last, seen = time.perf_counter(), encoder.encoded
        gap, most = 0.0, 0
        ready.set()
        while not stop.is_set():
            time.sleep(0.0002)
            now, count = time.perf_counter(), encoder.encoded
            gap, most = max(gap, now - last), max(most, count - seen)
            last, seen = now, count
        found.append((gap * 1000, most))

    thread = threading.Thread(target=waiting)
    thread.start()
    ready.wait()
    time.sleep(0.002)
    encode(encoder, spans)
    stop.set()
    thread.join()
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    spans = hotpath.real_spans(args.spans)
    encoder = Counting()
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; "
          f"{args.spans} real SERVER spans, {zipkin_json.SLICE_SPANS} per slice")
    plain = zipkin_json.ZipkinV2Encoder()
    per_span = hotpath.timed(lambda: whole(plain, spans), 4, 7) / len(spans)
    print(f"  encoding, CPU: {per_span:.1f} µs per span "
          f"({per_span * zipkin_json.SLICE_SPANS / 1000:.2f} ms per slice, "
          f"{per_span * len(spans) / 1000:.2f} ms per batch)")
    variants = {"whole": whole, "sliced": sliced, "idle": idle}
    gaps: dict[str, list[float]] = {name: [] for name in variants}
    most: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved: a noisy moment hurts all alike
        for name, encode in variants.items():
            gap, count = one_round(encode, encoder, spans)
            gaps[name].append(gap)
            most[name].append(count)
    print(f"  {'':8} {'longest gap ms':>22}   {'spans between wake-ups':>24}")
    print(f"  {'':8} {'median':>10} {'largest':>11}   {'median':>11} {'largest':>12}")
    for name in variants:
        print(f"  {name:8} {statistics.median(gaps[name]):10.2f} "
              f"{max(gaps[name]):11.2f}   {statistics.median(most[name]):11.0f} "
              f"{max(most[name]):12d}")


if __name__ == "__main__":
    main()
