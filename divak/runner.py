"""sprockets.http's ``sprockets.http.runner`` names, so a port changes only its imports.

:class:`Runner` lives in :mod:`divak.lifecycle.runner`, :func:`run` in
:mod:`divak.lifecycle.serve`.
"""

from divak.lifecycle.runner import Runner
from divak.lifecycle.serve import run
from divak.settings import parse_bool

__all__ = ["Runner", "parse_bool", "run"]
