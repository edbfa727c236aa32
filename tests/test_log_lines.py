"""One record, one line: no forged log lines, JSON lines with fields (issues 12, 15)."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import subprocess

import pytest

from divak.logs.formatters import TextFormatter, escape_line_breaks, escape_traceback
from tests.conftest import start_service

SERVICE = ["-m", "tests.services.echo_service"]
FORGED = "2026-12-01 00:00:00,000 INFO     forged: granted admin"
#: What the continuation lines of a text record start with.
INDENT = TextFormatter.indent
ISO_8601 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


def quote(text: str) -> str:
    return text.replace("\n", "%0A").replace(" ", "%20").replace(":", "%3A")


def run_service(env: dict[str, str]) -> list[str]:
    """Start the echo service, send the forging requests, stop it, return its lines."""
    process, port = start_service(SERVICE, env={"SHUTDOWN_LIMIT": "5", **env})
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path, status in (
            ("/echo/x" + quote("\n" + FORGED), 200),
            ("/fail/y" + quote("\n" + FORGED + "\n\nmore"), 500),
        ):
            connection.request("GET", path, headers={"Request-Id": "forge-test"})
            response = connection.getresponse()
            response.read()
            assert response.status == status
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output.splitlines()


def test_text_lines_cannot_be_forged() -> None:
    lines = run_service({"LOG_FORMAT": "text"})
    text = "\n".join(lines)
    # The forged record never starts a line of its own...
    assert not [line for line in lines if line.startswith(FORGED[:19])], text
    # ...it stays, escaped, inside the real record.
    (echo,) = [line for line in lines if "echo: x" in line]
    assert f"echo: x\\n{FORGED} [trace_id=" in echo
    # The traceback keeps its own lines, indented under the record; the
    # exception message stays on one.
    start = lines.index(INDENT + "Traceback (most recent call last):")
    assert lines[start + 1].startswith(INDENT + "  File ")
    (error,) = [line for line in lines if line.startswith(INDENT + "ValueError")]
    assert error == f"{INDENT}ValueError: cannot echo y\\n{FORGED}\\n\\nmore"
    assert "Uncaught exception" in lines[start - 1] or "failed" in lines[start - 1]


def test_json_lines_have_iso_times_and_extra_fields() -> None:
    pytest.importorskip("pythonjsonlogger")
    lines = run_service({"LOG_FORMAT": "json"})
    records = [json.loads(line) for line in lines]  # every line is one object
    for record in records:
        assert ISO_8601.fullmatch(record["time"]), record["time"]
        assert {"level", "logger", "message", "otelTraceID", "otelSpanID"} <= set(
            record
        )
    (echo,) = [r for r in records if r["message"].startswith("echo: ")]
    assert echo["message"] == f"echo: x\n{FORGED}"
    assert echo["echo.length"] == len(f"x\n{FORGED}")
    assert echo["divak_request_id"] == "forge-test"
    assert len(echo["otelTraceID"]) == 32
    (failed,) = [r for r in records if "exc_info" in r]
    assert "Traceback (most recent call last):" in failed["exc_info"]
    assert f"ValueError: cannot echo y\n{FORGED}" in failed["exc_info"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("a\u2028b\u2029c\x85d", "a\\u2028b\\u2029c\\x85d"),
        ("a\x0bb\x0cc\x1cd\x1de\x1ef", "a\\x0bb\\x0cc\\x1cd\\x1de\\x1ef"),
        ("tab\tstays", "tab\tstays"),
    ],
)
def test_escape_line_breaks(text: str, expected: str) -> None:
    assert escape_line_breaks(text) == expected
    assert len(expected.splitlines()) == 1


def test_escape_traceback_keeps_chained_tracebacks_and_joins_the_rest() -> None:
    def fail(text: str) -> None:
        raise ValueError(f"bad {text}")

    try:
        try:
            fail("x\nforged one")
        except ValueError as error:
            error.add_note("note\nforged two")
            raise RuntimeError("outer\r\nforged three") from error
    except RuntimeError:
        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "failed %s", ("a\nb",), None
        )
        import sys

        record.exc_info = sys.exc_info()
    lines = TextFormatter("%(levelname)s %(message)s").format(record).split("\n")
    assert lines[0] == "ERROR failed a\\nb"
    assert all(line.startswith(INDENT) for line in lines[1:]), lines
    lines = [line[len(INDENT) :] for line in lines[1:]]
    unindented = [line for line in lines if line and not line[0].isspace()]
    assert unindented == [
        "Traceback (most recent call last):",
        "ValueError: bad x\\nforged one\\nnote\\nforged two",
        "The above exception was the direct cause of the following exception:",
        "Traceback (most recent call last):",
        "RuntimeError: outer\\r\\nforged three",
    ]
    assert escape_traceback("KeyError: 'k'") == "KeyError: 'k'"


def test_text_formatter_in_a_subprocess_for_stack_info() -> None:
    code = (
        "import logging, sys, divak\n"
        "from divak.logs.formatters import TextFormatter\n"
        "handler = logging.StreamHandler(sys.stdout)\n"
        "handler.setFormatter(TextFormatter('%(name)s %(message)s'))\n"
        "log = logging.getLogger('x\\ny')\n"
        "log.addHandler(handler)\n"
        "log.warning('m\\nn', stack_info=True)\n"
    )
    result = subprocess.run(
        [__import__("sys").executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "x\\ny m\\nn"
    assert lines[1] == INDENT + "Stack (most recent call last):"
    assert all(line.startswith(INDENT + "  ") for line in lines[2:]), lines


#: A record of the text format starts with its time; nothing else may start
#: in the first column.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
#: Characters that must never reach a text log raw (the tab may).
RAW_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")


def test_text_records_hold_no_control_characters_and_no_forged_traceback() -> None:
    """Issue 20, item 8: path arguments, headers and exception messages that
    carry ESC, BEL, C1 characters, a bidi override, or a line break followed
    by ``Traceback (most recent call last):`` reach the log escaped, inside
    their record."""
    forged_traceback = (
        "\nTraceback (most recent call last):\n"
        '  File "forged.py", line 1, in <module>\n'
        f"{FORGED}"
    )
    process, port = start_service(
        SERVICE,
        env={
            "SHUTDOWN_LIMIT": "5",
            "LOG_FORMAT": "text",
            "ACCESS_LOG_FORMAT": "combined",
        },
    )
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path, status, headers in (
            # ESC [31m (red), BEL, CSI (C1, as UTF-8), RIGHT-TO-LEFT OVERRIDE
            ("/echo/%1B%5B31mred%07%C2%9B2J%E2%80%AEevil", 200, {}),
            # Header values may carry obs-text bytes: NEL and CSI (C1)
            ("/echo/h", 200, {"User-Agent": "ua\x9b2J", "Referer": "/r\x85forged"}),
            ("/fail/z" + quote(forged_traceback), 500, {}),
        ):
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == status
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    lines = output.split("\n")[:-1]
    # Only records start in the first column: a traceback is indented...
    assert [line for line in lines if not RECORD_START.match(line)] == [
        line for line in lines if line.startswith(INDENT)
    ]
    # ...and nothing raw reaches the output.
    assert not [line for line in lines if RAW_CONTROL.search(line)], lines
    (echo,) = [line for line in lines if "echo: \\x1b" in line]
    assert "echo: \\x1b[31mred\\x07\\x9b2J\\u202eevil [trace_id=" in echo
    (access,) = [line for line in lines if '"GET /echo/h HTTP/1.1"' in line]
    assert '"/r\\x85forged" "ua\\x9b2J"' in access
    # The forged traceback and record stay indented inside the real one.
    start = lines.index(INDENT + "ValueError: cannot echo z")
    record = next(line for line in reversed(lines[:start]) if RECORD_START.match(line))
    assert " ERROR " in record and "exception GET /fail/z" in record, record
    assert lines[start + 1 : start + 4] == [
        INDENT + "Traceback (most recent call last):",
        INDENT + '  File "forged.py", line 1, in <module>',
        INDENT + FORGED,
    ]
