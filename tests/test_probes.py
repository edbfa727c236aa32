"""divak asks objects what they are by their type, not by probing them.

Code that needs to know what an object can do asks with ``isinstance``: a
divak base class (:class:`divak.CallbackManager`, :class:`divak.Recorder`)
or a :class:`typing.Protocol` for what a foreign class may provide.
``getattr``/``hasattr`` calls remain only for objects divak does not
define (a log record, a user's handler attribute, Tornado's request, the
installed OpenTelemetry release), each with a comment right above it
saying why; this test counts them (AST, every call of either builtin) and
fails above :data:`MOST`, listing them.
"""

from __future__ import annotations

import ast
import pathlib

import divak

ROOT = pathlib.Path(divak.__file__).parent

#: Most ``getattr``/``hasattr`` calls divak's code may hold.
MOST = 12

PROBES = frozenset({"getattr", "hasattr"})


def probes_in(source: str) -> list[tuple[int, str]]:
    """(line, code) of every ``getattr``/``hasattr`` call in *source*."""
    return [
        (node.lineno, ast.unparse(node))
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in PROBES
    ]


def probes() -> list[str]:
    """``path:line: code`` of every probe in divak, in file order."""
    return [
        f"{path.relative_to(ROOT.parent)}:{line}: {code}"
        for path in sorted(ROOT.rglob("*.py"))
        for line, code in sorted(probes_in(path.read_text(encoding="utf-8")))
    ]


def test_at_most_twelve_probes_remain() -> None:
    found = probes()
    assert len(found) <= MOST, "\n".join(found)


def test_the_count_sees_every_form_of_probe() -> None:
    source = (
        "x = getattr(a, 'b', None)\n"
        "if hasattr(a, 'c'):\n"
        "    y = [getattr(r, n, '') for n in names]\n"
        "z = getattr(getattr(a, 'd', None), 'e')\n"
        "a.getattr(b)  # a method of that name is not the builtin\n"
    )
    assert sorted(line for line, _ in probes_in(source)) == [1, 2, 3, 4, 4]


def test_runner_and_test_case_ask_the_application_its_class() -> None:
    # The modules that used to probe applications for callbacks, readiness
    # and span flushing hold no probe at all any more.
    for module in (
        "lifecycle/runner.py",
        "lifecycle/application.py",
        "testing/case.py",
        "export/queue.py",
        "errors/writer.py",
        "errors/logger.py",
        "tracing/routes.py",
    ):
        assert probes_in((ROOT / module).read_text(encoding="utf-8")) == [], module
