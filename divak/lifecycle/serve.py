""":func:`run`: build an application from settings and serve it until stopped.

Reads the settings and the environment (``PORT``, ``ADDRESS``, ``DEBUG``),
configures logging, binds the sockets, and serves with a
:class:`~divak.lifecycle.runner.Runner` from this process or from forked children
(see :mod:`divak.lifecycle.process`).
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import socket
import typing

from tornado import process, web

from divak.integrations import sentry
from divak.lifecycle.process import (
    EXIT_FORCED,
    EXIT_START_FAILED,
    MAX_RESTARTS,
    fork_and_serve,
    raise_open_files_limit,
)
from divak.lifecycle.runner import HEADER_TIMEOUT, Runner
from divak.lifecycle.server import bind_sockets
from divak.logs import ids as divak_log
from divak.metrics import peers as metrics_peers
from divak.settings import number_setting, parse_bool, setting

__all__ = ["run"]

logger = logging.getLogger("divak.runner")


def _configure_logging(log_config: dict[str, typing.Any] | None, debug: bool) -> None:
    divak_log.install_log_ids()
    if log_config is not None:
        logging.config.dictConfig(log_config)
    elif not divak_log.logging_configured():
        divak_log.configure_default_logging(debug)


def _serve_here(
    create_application: typing.Callable[..., web.Application],
    app_settings: dict[str, typing.Any],
    sockets: list[socket.socket],
) -> tuple[int, bool]:
    """Build the application here and serve it; return the status and whether
    the reporters stopped in time."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    runner: Runner | None = None
    try:
        try:
            app = create_application(**app_settings)
        except Exception:
            logger.critical("creating the application failed, exiting", exc_info=True)
            return EXIT_START_FAILED, True
        runner = Runner(app)
        loop.run_until_complete(runner.serve(sockets))
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 1), True
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return (EXIT_FORCED if runner.forced else 0), not runner.flush_abandoned


def run(
    create_application: typing.Callable[..., web.Application],
    settings: dict[str, typing.Any] | None = None,
    log_config: dict[str, typing.Any] | None = None,
) -> None:
    """Build the application, serve it, drain on SIGTERM/SIGINT, return.

    :param create_application: called with the settings as keyword
        arguments (an application class works as it is); in every child
        process when forking, so each child builds its own tracer provider
        and reporter threads
    :param settings: application settings; the keys below are read here
        and every key except ``port`` and ``number_of_procs`` is passed on
        to *create_application*
    :param log_config: a :func:`logging.config.dictConfig` dictionary.
        Without it, and only when the root logger has no handler yet
        (OpenTelemetry's log bridges, which export records and write none,
        do not count: see :func:`divak.logs.ids.logging_configured`),
        divak applies :func:`divak.logs.ids.default_logging_config`.
    :raises SystemExit: with a non-zero status when the application could
        not be created or started (70), when a second signal cut the drain
        short (1), or when children kept failing beyond ``max_restarts``
    :raises ValueError: for a malformed ``DEBUG``, ``PORT`` or numeric
        setting; the message names the variable or setting

    When the span flush does not finish within ``shutdown_limit``, the
    process exits without waiting any longer for a collector that does not
    answer.

    Before binding, the soft limit of open files is raised to the hard
    limit (:func:`divak.lifecycle.process.raise_open_files_limit`), and the
    metrics directories that runs killed before they could clean up left
    behind are removed (:func:`divak.metrics.peers.remove_stale_directories`).

    .. rubric:: settings['port']

    The TCP port; default the ``PORT`` environment variable, else 8000.

    .. rubric:: settings['address']

    The address to listen on (``127.0.0.1`` serves local clients only);
    default the ``ADDRESS`` environment variable, else all interfaces.

    .. rubric:: settings['debug']

    Tornado's debug mode (autoreload, tracebacks, one process, DEBUG
    logging); default the ``DEBUG`` environment variable, which accepts
    1/0, true/false, yes/no, on/off.

    .. rubric:: settings['number_of_procs']

    Processes to serve from: 1 (the default) serves from this process;
    another number forks that many children after binding the sockets
    (with ``SO_REUSEPORT``); 0 forks one per CPU.  sprockets.http's default
    is 0.  A child stops when the parent dies (even of SIGKILL); a child
    that dies while the parent is not stopping is restarted (see
    ``max_restarts``).

    .. rubric:: settings['max_restarts']

    How many children the parent restarts at most over its life, when
    forking; default 100, as :func:`tornado.process.fork_processes`.  One
    more unexpected exit then stops the service, with that child's status
    (1 when it was killed by a signal).  A child that could not start its
    application (status 70) is never restarted.

    .. rubric:: settings['shutdown_limit']

    Seconds to wait for in-flight requests on SIGTERM, then again for the
    shutdown callbacks and for the span flush; default 5.

    .. rubric:: settings['start_limit']

    Seconds the ``before_run`` callbacks, then the ``on_start`` callbacks,
    may take; default 30 (see :class:`divak.Application`).

    .. rubric:: settings['header_timeout']

    Seconds a request's headers may take to arrive (a new connection's
    first request counts from the accept); a connection that misses the
    deadline is closed.  Default the ``HEADER_TIMEOUT`` environment
    variable, else 10; 0 turns the limit off.  See
    :class:`~divak.lifecycle.server.DrainingHTTPServer`.

    .. rubric:: settings['idle_connection_timeout'], settings['body_timeout']

    Seconds, passed to :class:`tornado.httpserver.HTTPServer`: how long an
    idle keep-alive connection is kept (Tornado's default is an hour), and
    how long a request body may take to arrive (no limit by default).

    .. rubric:: settings['wait_timeout']

    Seconds between progress checks while draining; default 1.

    .. rubric:: settings['xheaders']

    Trust ``X-Real-Ip``/``X-Forwarded-For`` for the client address;
    default :data:`True` (services run behind a load balancer).

    .. rubric:: settings['max_body_size'], settings['max_buffer_size']

    Bytes, passed to :class:`tornado.httpserver.HTTPServer`.
    """
    app_settings = dict(settings or {})
    debug = parse_bool(setting(app_settings, "debug", "DEBUG", False)[0], "DEBUG")
    app_settings["debug"] = debug
    port = number_setting(app_settings, "port", "PORT", 8000)
    app_settings.pop("port", None)
    procs = number_setting(app_settings, "number_of_procs", None, 1)
    app_settings.pop("number_of_procs", None)
    address = setting(app_settings, "address", "ADDRESS", None)[0] or None
    if address is not None:
        app_settings["address"] = address
    for key in (
        "shutdown_limit",
        "wait_timeout",
        "start_limit",
        "idle_connection_timeout",
        "body_timeout",
    ):
        if app_settings.get(key) is not None:  # fail now, naming the setting
            app_settings[key] = number_setting(app_settings, key, None, 0.0)
    # fail now, naming the setting or the variable
    app_settings["header_timeout"] = number_setting(
        app_settings, "header_timeout", "HEADER_TIMEOUT", HEADER_TIMEOUT
    )
    max_restarts = number_setting(app_settings, "max_restarts", None, MAX_RESTARTS)
    app_settings.setdefault("xheaders", True)
    _configure_logging(log_config, debug)
    sentry.install()  # only when SENTRY_DSN is set, as sprockets.http
    if debug and procs != 1:
        logger.warning("debug mode serves from one process, not %d", procs)
        procs = 1
    if procs == 0:
        procs = process.cpu_count()
    raise_open_files_limit()
    metrics_peers.remove_stale_directories()
    if procs == 1:
        sockets = bind_sockets(port, address)
        status, clean = _serve_here(create_application, app_settings, sockets)
        if not clean:
            # The reporter thread (a daemon) is still blocked on its
            # collector; divak's providers register no exit hook, and a
            # span queue shuts down once, so nothing waits for it again.
            logger.warning("exiting without waiting for the reporters")
    else:
        sockets = bind_sockets(port, address, reuse_port=True)
        # Each child answers /metrics with the sum over all of them.
        with metrics_peers.shared_directory():
            status = fork_and_serve(
                _serve_here,
                create_application,
                app_settings,
                sockets,
                procs,
                max_restarts,
            )
    if status:
        raise SystemExit(status)
