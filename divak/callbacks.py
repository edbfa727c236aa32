"""Running life-cycle callbacks: awaiting them, bounding them, logging failures.

Helpers of :class:`divak.app.CallbackManager`; callbacks may be plain
functions, coroutine functions, or return any awaitable (Tornado futures
included).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing

from tornado import gen

logger = logging.getLogger("divak.app")


def _as_future(awaitable: typing.Any) -> asyncio.Future[typing.Any]:
    # Tornado futures and coroutines alike.
    return typing.cast(asyncio.Future[typing.Any], gen.convert_yielded(awaitable))


def _discard(awaitable: typing.Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:  # a coroutine that will never run
        close()


async def _wait_bounded(
    pending: dict[asyncio.Future[typing.Any], typing.Any], timeout: float, kind: str
) -> bool:
    """Await *pending* for *timeout* seconds; log failures, cancel the rest."""
    if not pending:
        return True
    done, not_done = await asyncio.wait(pending, timeout=timeout)
    for future in done:
        if not future.cancelled() and future.exception() is not None:
            logger.error(
                "%s callback %s failed",
                kind,
                _name(pending[future]),
                exc_info=future.exception(),
            )
    for future in not_done:
        logger.warning(
            "%s callback %s did not finish within %.1fs, cancelled",
            kind,
            _name(pending[future]),
            timeout,
        )
        future.cancel()
    if not_done:  # let the cancellations run before the loop closes
        await asyncio.wait(not_done, timeout=0.1)
    return not not_done


def _name(callback: typing.Any) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


async def _logged(
    callback: typing.Callable[..., typing.Any], *args: typing.Any
) -> None:
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_start callback %s failed", _name(callback))
