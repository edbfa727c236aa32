"""sprockets.http's ``sprockets.http.app`` names, so a port changes only its imports.

:class:`Application`, :class:`CallbackManager` and :class:`StatusHandler`
live in :mod:`divak.lifecycle.application`.
"""

from divak.lifecycle.application import Application, CallbackManager, StatusHandler

__all__ = ["Application", "CallbackManager", "StatusHandler"]
