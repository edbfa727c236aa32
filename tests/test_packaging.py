"""The source distribution: what it holds, and that its tests run from it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def unpacked_sdist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Build the sdist as a release would (``python -m build``) and unpack it."""
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    [archive_path] = out.glob("divak-*.tar.gz")
    name = archive_path.name
    with tarfile.open(archive_path) as archive:
        archive.extractall(out, filter="data")
    return out / name.removesuffix(".tar.gz")


def test_sdist_holds_the_tests_docs_and_examples(unpacked_sdist: pathlib.Path) -> None:
    for path in (
        "tests/conftest.py",
        "tests/test_packaging.py",
        "docs/conf.py",
        "docs/index.rst",
        "examples/demo.py",
        "bench/README.rst",
        "constraints/lowest.txt",
        "divak/py.typed",
        "LICENSE",
    ):
        assert (unpacked_sdist / path).is_file(), path
    assert not list(unpacked_sdist.rglob("__pycache__"))


def test_tests_pass_from_the_unpacked_sdist(unpacked_sdist: pathlib.Path) -> None:
    # A representative part of the suite (the whole suite runs in CI from
    # the checkout): the layers, the command, the examples, the schema.
    env = {**os.environ, "PYTHONPATH": str(unpacked_sdist)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/test_layers.py",
            "tests/test_cli.py",
            "tests/test_examples.py",
        ],
        cwd=unpacked_sdist,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert str(unpacked_sdist / "divak") in subprocess.run(
        [sys.executable, "-c", "import divak; print(divak.__file__)"],
        cwd=unpacked_sdist,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
