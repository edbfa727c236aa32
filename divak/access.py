"""The access log: one line per request on the ``tornado.access`` logger."""

from __future__ import annotations

import logging

from tornado import log, web

__all__ = ["write_access_log"]


def write_access_log(handler: web.RequestHandler) -> None:
    """Write the access line of *handler*'s request.

    Client address (the real one when ``xheaders`` is on), method, URI,
    status and duration in milliseconds; INFO below 400, WARNING for 4xx,
    ERROR for 5xx.  Called with the request's context current, so the
    record carries the request's ids.

    :param handler: the handler that served the request
    """
    status = handler.get_status()
    level = (
        logging.INFO
        if status < 400
        else logging.WARNING
        if status < 500
        else logging.ERROR
    )
    if log.access_log.isEnabledFor(level):
        request = handler.request
        log.access_log.log(
            level,
            '%s "%s %s" %d %.2fms',
            request.remote_ip,
            request.method,
            request.uri,
            status,
            1000.0 * request.request_time(),
        )
