"""The ``divak`` command.

``divak run MODULE:CALLABLE [--port N] [--address ADDR] [--env-file FILE]
[--debug]``, also
available as ``python -m divak``.  It replaces sprockets.http's
``setup.py httprun``: it reads an optional environment file into the
environment, imports ``MODULE`` (the current directory is on the import
path, as with ``python -m``), and calls :func:`divak.run` with
``CALLABLE`` as the application factory.

Environment file syntax (:func:`read_env_file`)::

    # a comment line
    export DATABASE_URL="postgresql://db/app"   # a comment after whitespace
    FRAGMENT=http://host/page#section            # "#" inside a value is kept
    GREETING='hello # world'
    OBSOLETE=                                    # removes OBSOLETE
    ALSO_OBSOLETE=""                             # removes it too

Values from the file override the inherited environment; ``--port``,
``--address`` and ``--debug`` override both.  As with sprockets.http, an
empty value, quoted or not, removes the variable.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import pkgutil
import sys
import typing

import dotenv.parser

from divak.lifecycle import run

__all__ = ["EnvFileError", "load_factory", "main", "parse_env_line", "read_env_file"]

#: Exit status for usage errors (bad arguments, unreadable env file,
#: a module or callable that cannot be loaded).
EXIT_USAGE = 2

class EnvFileError(ValueError):
    """A malformed or unreadable environment file.

    The message names the file and, for a malformed line, its number:
    ``.env:3: cannot parse 'NAME="open'``.
    """


def _bindings(stream: typing.TextIO, path: str) -> dict[str, str | None]:
    """The variables of an environment file, parsed by python-dotenv."""
    variables: dict[str, str | None] = {}
    for binding in dotenv.parser.parse_stream(stream):
        if binding.error:
            original = binding.original.string
            text = original.lstrip()
            # The chunk starts with the blank lines before the statement.
            blank = original[: len(original) - len(text)]
            line = binding.original.line + blank.count("\n")
            raise EnvFileError(f"{path}:{line}: cannot parse {text.strip()[:60]!r}")
        if binding.key is None or binding.value is None:
            continue  # a blank line, a comment, or a name without "=": skipped
        variables[binding.key] = binding.value or None
    return variables


def parse_env_line(line: str) -> tuple[str, str | None] | None:
    """Parse one line of an environment file, as python-dotenv does.

    :param line: the line, with or without its line ending
    :returns: :data:`None` for a blank line, a comment or a name without
        ``=``, else ``(name, value)`` where *value* is :data:`None` for an
        empty value (remove the variable)
    :raises ValueError: for a line python-dotenv cannot parse (the message
        quotes it)

    The syntax is python-dotenv's: an optional ``export`` prefix; a value
    in single quotes is literal, in double quotes it may hold escapes
    (``\\n``) and span lines (in a file); an unquoted value ends at a
    ``#`` that follows whitespace.  As sprockets.http reads its environment
    files, an empty value (``NAME=``, ``NAME=""``) removes the variable.
    """
    try:
        parsed = _bindings(io.StringIO(line), "line")
    except EnvFileError as error:
        raise ValueError(str(error).removeprefix("line:1: ")) from None
    return next(iter(parsed.items()), None)


def read_env_file(path: str) -> dict[str, str | None]:
    """Read an environment file (see :func:`parse_env_line` for the syntax).

    :param path: the file to read (UTF-8)
    :returns: the variables in file order; :data:`None` marks a variable
        to remove from the environment
    :raises EnvFileError: when the file cannot be read or a line cannot be
        parsed; the message names the file and the line number
    """
    try:
        with open(path, encoding="utf-8") as env_file:
            return _bindings(env_file, path)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise EnvFileError(
            f"{path}: cannot read environment file: {reason or error}"
        ) from None


def apply_env(variables: dict[str, str | None]) -> None:
    """Set (or, for :data:`None`, remove) *variables* in :data:`os.environ`."""
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def load_factory(spec: str) -> typing.Callable[..., typing.Any]:
    """Import ``MODULE:CALLABLE`` and return the callable.

    The current directory is put first on :data:`sys.path`, as
    ``python -m`` does.  ``CALLABLE`` may be a dotted attribute path.

    :param spec: e.g. ``"myapp:make_app"`` or ``"myapp.web:Application"``
    :raises ValueError: when *spec* is not ``MODULE:CALLABLE``, the module
        cannot be imported, or the attribute is missing or not callable
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected MODULE:CALLABLE, not {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
        ) from error
    try:
        target = pkgutil.resolve_name(spec)
    except AttributeError:
        raise ValueError(
            f"module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return typing.cast(typing.Callable[..., typing.Any], target)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divak", description="Run Tornado services built with divak."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run",
        help="serve an application until SIGTERM/SIGINT",
        description=(
            "Serve the application that MODULE:CALLABLE builds, with "
            "divak.run.  Environment: PORT, ADDRESS, DEBUG, LOG_FORMAT, and whatever "
            "the application reads."
        ),
    )
    run_parser.add_argument(
        "factory", metavar="MODULE:CALLABLE", help="the application factory"
    )
    run_parser.add_argument(
        "--port", type=int, help="TCP port (overrides PORT and the env file)"
    )
    run_parser.add_argument(
        "--address",
        help="address to listen on, e.g. 127.0.0.1 (overrides ADDRESS)",
    )
    run_parser.add_argument(
        "--env-file",
        metavar="FILE",
        help="read NAME=VALUE lines into the environment first",
    )
    run_parser.add_argument(
        "--debug", action="store_true", help="debug mode: autoreload, DEBUG logs"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``divak`` console script.

    :param argv: the arguments without the program name; default
        :data:`sys.argv`
    :returns: the exit status, 0 after a graceful stop
    :raises SystemExit: with status 2 for usage errors (message on
        standard error), or the status :func:`divak.run` exits with
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.env_file is not None:
        try:
            apply_env(read_env_file(args.env_file))
        except EnvFileError as error:
            parser.exit(EXIT_USAGE, f"divak: error: {error}\n")
    if args.port is not None:
        os.environ["PORT"] = str(args.port)
    if args.address is not None:
        os.environ["ADDRESS"] = args.address
    if args.debug:
        os.environ["DEBUG"] = "1"
    try:
        factory = load_factory(args.factory)
    except ValueError as error:
        parser.exit(EXIT_USAGE, f"divak: error: {error}\n")

    run(factory)
    return 0
