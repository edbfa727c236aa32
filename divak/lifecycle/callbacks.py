"""Running life-cycle callbacks: awaiting them, bounding them, logging failures.

Helpers of :class:`divak.lifecycle.application.CallbackManager`; callbacks may be plain
functions, coroutine functions, or return any awaitable (Tornado futures
included).
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import logging
import types
import typing

from tornado import gen

logger = logging.getLogger("divak.app")

__all__ = ["as_future", "callback_name", "discard", "logged", "wait_bounded"]


def as_future(awaitable: typing.Any) -> asyncio.Future[typing.Any]:
    """*awaitable* (a coroutine, an asyncio or Tornado future) as a future."""
    return typing.cast(asyncio.Future[typing.Any], gen.convert_yielded(awaitable))


def discard(awaitable: typing.Any) -> None:
    """Close *awaitable* when it is a coroutine that will never run.

    Closing it spares the "coroutine was never awaited" warning; any other
    awaitable (a future) is left alone.
    """
    if isinstance(awaitable, collections.abc.Coroutine):
        awaitable.close()


async def wait_bounded(
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
                callback_name(pending[future]),
                exc_info=future.exception(),
            )
    for future in not_done:
        logger.warning(
            "%s callback %s did not finish within %.1fs, cancelled",
            kind,
            callback_name(pending[future]),
            timeout,
        )
        future.cancel()
    if not_done:  # let the cancellations run before the loop closes
        await asyncio.wait(not_done, timeout=0.1)
    return not not_done


#: Callables that always have a qualified name.
_NAMED = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    type,
)


def callback_name(callback: typing.Any) -> str:
    """The qualified name of *callback*, for log lines.

    A function's, a method's or a class's ``__qualname__``; ``repr`` of
    any other callable (a :func:`functools.partial`, an object with
    ``__call__``).
    """
    if isinstance(callback, _NAMED):
        return callback.__qualname__
    return repr(callback)


async def logged(
    callback: typing.Callable[..., typing.Any], *args: typing.Any
) -> None:
    """Call *callback* with *args* and await its result; log a failure."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("on_start callback %s failed", callback_name(callback))
