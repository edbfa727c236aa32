"""The ``divak run`` command: env files, factories, errors."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import sys
import urllib.request

import pytest

from divak import cli
from tests.conftest import free_port, start_service


#: The rows of python-dotenv's syntax divak relies on; an empty value
#: (quoted or not) removes the variable, as sprockets.http does.
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   \n", None),
        ("# a comment", None),
        ("   # an indented comment", None),
        ("NAME=value", ("NAME", "value")),
        ("NAME=value\r\n", ("NAME", "value")),
        ("export NAME=value", ("NAME", "value")),
        ("export\tNAME=value", ("NAME", "value")),
        ("exported=1", ("exported", "1")),
        ("  NAME =", ("NAME", None)),
        ("NAME=  spaced value  ", ("NAME", "spaced value")),
        ("URL=http://host/page#section", ("URL", "http://host/page#section")),
        ("COLOR=#fff", ("COLOR", "#fff")),
        ("NAME=value # a comment", ("NAME", "value")),
        ("NAME=value\t# a comment", ("NAME", "value")),
        ('NAME="quoted # not a comment"', ("NAME", "quoted # not a comment")),
        ("NAME='single \"inner\"'", ("NAME", 'single "inner"')),
        ('NAME="value"  # comment', ("NAME", "value")),
        ('NAME=""', ("NAME", None)),  # removes NAME, as sprockets.http does
        ("NAME=''", ("NAME", None)),
        ('NAME=" "', ("NAME", " ")),
        ("NAME=it's", ("NAME", "it's")),
        ("NAME=", ("NAME", None)),
        ("NAME=   ", ("NAME", None)),
        ("NAME= # nothing", ("NAME", "# nothing")),  # dotenv: a value, not a comment
        ("NAME", None),  # a name without "=": skipped, as load_dotenv does
        ('NAME="a\\nb"', ("NAME", "a\nb")),  # escapes in double quotes
        ("NAME='a\\nb'", ("NAME", "a\\nb")),  # single quotes are literal
        ('NAME="unterminated', ValueError),
        ('NAME="a"b', ValueError),
        ("NAME='a' b", ValueError),
    ],
)
def test_env_line(line: str, expected: object) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError):
            cli.parse_env_line(line)
        return
    assert cli.parse_env_line(line) == expected


def test_env_file_error_names_file_and_line(tmp_path: pathlib.Path) -> None:
    env_file = tmp_path / "service.env"
    env_file.write_text('# settings\nGOOD=1\n\nBAD="open\n')
    with pytest.raises(cli.EnvFileError, match=r"service\.env:4: cannot parse"):
        cli.read_env_file(str(env_file))


def test_multi_line_value_in_double_quotes(tmp_path: pathlib.Path) -> None:
    env_file = tmp_path / "service.env"
    env_file.write_text('KEY="line one\nline two"\nNEXT=1\n')
    assert cli.read_env_file(str(env_file)) == {
        "KEY": "line one\nline two",
        "NEXT": "1",
    }


def test_unreadable_env_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "missing.env"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["run", "tests.services.lifecycle:make_app", "--env-file", str(missing)]
        )
    assert exit_info.value.code == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert "missing.env: cannot read environment file" in error


def test_malformed_env_file_from_the_command(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture
) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text('A=1\nB="open\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["run", "tests.services.lifecycle:make_app", "--env-file", str(env_file)]
        )
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "bad.env:2: cannot parse 'B=\"open'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "no_such_module_here:make_app",
            "cannot import module 'no_such_module_here': ModuleNotFound",
        ),
        ("tests.services.lifecycle:nothing", "has no attribute 'nothing'"),
        ("tests.services.lifecycle:logger", "is not callable"),
        ("tests.services.lifecycle", "expected MODULE:CALLABLE"),
    ],
)
def test_factory_errors(spec: str, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", spec])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_module_that_fails_to_import(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    (tmp_path / "broken_service.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["run", "broken_service:make_app"])
    error = capsys.readouterr().err
    assert "cannot import module 'broken_service': RuntimeError: no config" in error


def test_run_with_env_file_and_port(tmp_path: pathlib.Path) -> None:
    port = free_port()
    env_file = tmp_path / "service.env"
    env_file.write_text(
        "# service settings\n"
        f"export PORT={free_port()}\n"
        "GREETING='hello # world'\n"
        "FRAGMENT=http://host/page#top  # a comment\n"
        "INHERITED=from the file\n"
        "REMOVED=\n"
        'QUOTED_EMPTY=""\n'
        "SINGLE_EMPTY=''\n"
        "SHUTDOWN_LIMIT=1\n"
    )
    env = {
        "INHERITED": "from the parent",
        "REMOVED": "present",
        "QUOTED_EMPTY": "present",
        "SINGLE_EMPTY": "present",
    }
    process, _ = start_service(
        [
            "-m",
            "divak",
            "run",
            "tests.services.lifecycle:make_app",
            "--env-file",
            str(env_file),
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
        ],
        env=env,
        port=port,  # --port wins over the file's PORT
    )

    def variable(name: str) -> str | None:
        url = f"http://127.0.0.1:{port}/env/{name}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["value"]

    try:
        assert variable("GREETING") == "hello # world"
        assert variable("FRAGMENT") == "http://host/page#top"
        assert variable("INHERITED") == "from the file"
        assert variable("REMOVED") is None
        assert variable("QUOTED_EMPTY") is None
        assert variable("SINGLE_EMPTY") is None
        assert variable("PORT") == str(port)
        assert variable("ADDRESS") == "127.0.0.1"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


def test_debug_flag(tmp_path: pathlib.Path) -> None:
    port = free_port()
    process, _ = start_service(
        ["-m", "divak", "run", "tests.services.lifecycle:make_app", "--debug"],
        env={"DEBUG": "0"},
        port=port,
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert process.stdout is not None
    assert "debug logging is on" in process.stdout.read()


def test_current_directory_is_importable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myservice.py").write_text("def make_app(**settings):\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", cwd)])
    assert cli.load_factory("myservice:make_app")() == 42
