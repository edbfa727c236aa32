"""A correlation id header: ``Request-Id``, ``Correlation-ID``, ..."""

from __future__ import annotations

import logging
import os
import threading
import typing

from opentelemetry.context import Context, set_value
from opentelemetry.propagators import textmap

from divak.logs.ratelimit import safe_log
from divak.propagation._common import REQUEST_ID_KEY, get_request_id

logger = logging.getLogger(__name__)


#: Random bytes drawn from :func:`os.urandom` per refill of a thread's ids:
#: 256 ids per system call instead of one.
_POOL_BYTES = 4096

#: The variant nibble (RFC 9562, section 4.1): its two high bits are ``10``,
#: its two low bits stay random.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


class _IdPool(threading.local):
    """One thread's ids not handed out yet."""

    def __init__(self) -> None:
        self.ids: list[str] = []


_pool = _IdPool()


def _forget_ids() -> None:
    # A forked child must never hand out the ids its parent will.
    global _pool
    _pool = _IdPool()


os.register_at_fork(after_in_child=_forget_ids)


def _fresh_ids() -> list[str]:
    """256 new ids from 4 KiB of :func:`os.urandom`, 16 bytes each."""
    text = os.urandom(_POOL_BYTES).hex()
    return [
        f"{text[at:at + 8]}-{text[at + 8:at + 12]}-4{text[at + 13:at + 16]}"
        f"-{_VARIANT[text[at + 16]]}{text[at + 17:at + 20]}-{text[at + 20:at + 32]}"
        for at in range(0, len(text), 32)
    ]


def new_request_id() -> str:
    """A new random correlation id: a UUID version 4 in its canonical text form.

    122 random bits from :func:`os.urandom` (unguessable), formatted as
    RFC 9562 says (``xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx``); the same
    ids as ``str(uuid.uuid4())`` at a fraction of the cost.  The random
    bytes are drawn 4 KiB (256 ids) at a time, per thread; each id is
    handed out once, and a forked child discards the ids its parent had
    left.  Thread-safe.
    """
    ids = _pool.ids
    if not ids:
        ids = _pool.ids = _fresh_ids()
    return ids.pop()


def _valid_request_id(value: str, max_length: int) -> bool:
    if not value or len(value) > max_length:
        return False
    return all("!" <= ch <= "~" for ch in value)


def _first_valid(
    values: typing.Iterable[str] | None, max_length: int
) -> tuple[str | None, int | None]:
    """The first valid id of a header's values; and how long the header was.

    A header sent more than once reaches the propagator combined with
    commas (Tornado's ``HTTPHeaders``, as RFC 9110 section 5.3 allows), or
    as several values: both are read as one list of ids.  The length is
    :data:`None` when there is no header.
    """
    if values is None:
        return None, None
    if isinstance(values, str):
        values = (values,)
    length = 0
    for value in values:
        length += len(value)
        for piece in value.split(","):
            piece = piece.strip(" \t")
            if _valid_request_id(piece, max_length):
                return piece, length
    return None, length


class RequestIdPropagation(textmap.TextMapPropagator):
    """A correlation id header, taken from the request or made up.

    The incoming header is accepted when it is 1 to *max_length* visible
    ASCII characters (``!`` to ``~``: no spaces, no control characters,
    so no CR or LF) other than the comma; otherwise *value_factory* makes a
    new one (an invalid value is logged at DEBUG and never echoed).  A
    header sent more than once is read as a comma-separated list (as
    RFC 9110 section 5.3 combines field lines, and Tornado does): its
    first valid element is the id, so ``Request-Id: a`` and
    ``Request-Id: b`` give ``a``, not ``a,b``.  The id is echoed on every
    response (errors and 404s included), written into every log record as
    ``divak_request_id``, set on the server span as the ``divak.request_id``
    attribute, and sent on every outgoing request.

    :param header_name: the header to read, echo and send; divak-tornado
        uses ``Request-Id``, sprockets.mixins.correlation ``Correlation-ID``
    :param value_factory: callable returning a new id; its :func:`str` is
        used.  Default :func:`new_request_id`, a random UUID version 4.
        :data:`None` disables generation: requests without a valid header
        then have no id.
    :param max_length: longest accepted id, in characters
    """

    def __init__(
        self,
        header_name: str = "Request-Id",
        value_factory: typing.Callable[[], typing.Any] | None = new_request_id,
        *,
        max_length: int = 128,
    ) -> None:
        self.header_name = header_name
        self.value_factory = value_factory
        self.max_length = max_length

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the request's correlation id added."""
        value, length = _first_valid(
            getter.get(carrier, self.header_name), self.max_length
        )
        if value is None:
            if length is not None and logger.isEnabledFor(logging.DEBUG):
                safe_log(
                    logger,
                    logging.DEBUG,
                    "ignoring invalid %s header of %d characters",
                    self.header_name,
                    length,
                )
            if self.value_factory is not None:
                value = str(self.value_factory())
        if value is None:
            return context if context is not None else Context()
        return set_value(REQUEST_ID_KEY, value, context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the correlation id of *context* (default: current)."""
        value = get_request_id(context)
        if value is not None:
            setter.set(carrier, self.header_name, value)

    @property
    def fields(self) -> set[str]:
        """The header name this propagator writes."""
        return {self.header_name}
