"""Refuse to import next to divak-tornado, which owns the same package.

divak-tornado installs its modules into the ``divak`` package too, so
installing one distribution over the other leaves a mix of both packages'
files.  Importing :mod:`divak` raises a clear :class:`ImportError` naming
the conflicting distribution instead of failing later on a missing name.
"""

from __future__ import annotations

import importlib.metadata

#: Distributions that install a top-level ``divak`` package of their own.
CONFLICTING_DISTRIBUTIONS = ("divak-tornado",)


def check_conflicts() -> None:
    """Raise when a distribution that also owns ``divak`` is installed.

    Looks the distributions up with :mod:`importlib.metadata`, so it sees
    what the installer recorded on :data:`sys.path`.

    :raises ImportError: naming the distribution and its version, and
        saying to uninstall it and reinstall divak
    """
    for name in CONFLICTING_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        raise ImportError(
            f"divak cannot be imported while {name} {version} is installed: both "
            f"install the 'divak' package, so their files overwrite each other. "
            f"Run 'pip uninstall {name} divak', then reinstall divak."
        )


check_conflicts()
