"""W3C Baggage: the ``baggage`` header."""

from __future__ import annotations

import re
import urllib.parse

from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators import textmap

from divak.propagation._common import (
    _joined,
)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAGGAGE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_BAGGAGE_SAFE = "!#$&'()*+-./:<>?@[]^_`{|}~"  # baggage-octets kept as they are


class BaggagePropagation(W3CBaggagePropagator):
    """W3C Baggage: the ``baggage`` header.

    Built on OpenTelemetry's ``W3CBaggagePropagator`` (so values land in
    :mod:`opentelemetry.baggage`), with its deviations from the W3C Baggage
    specification fixed:

    * values are percent-decoded and -encoded as the spec says (``+`` is a
      plus sign, a space is ``%20``; OpenTelemetry uses form encoding);
      keys are ``token`` characters and taken as they are;
    * a header over the limits keeps the whole list-members that fit
      instead of being dropped entirely: up to *max_members* members and
      *max_length* bytes (the spec's minimums are 64 and 8192);
    * an invalid list-member (bad key, bad value, invalid UTF-8) is dropped
      on its own, without logging the untrusted text;
    * properties (``;k=v``) are accepted and not kept (OpenTelemetry's
      baggage has no metadata); of duplicate keys the last wins.

    :param max_members: the most list-members read or written
    :param max_length: the longest ``baggage`` value read or written, in
        bytes
    """

    #: The header :meth:`extract` reads: without it, it returns the context
    #: it was given.
    EXTRACTED_HEADERS = frozenset({"baggage"})

    def __init__(self, max_members: int = 64, max_length: int = 8192) -> None:
        self.max_members = max_members
        self.max_length = max_length

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Return *context* with the valid baggage entries added."""
        if context is None:
            context = Context()
        header = _joined(getter.get(carrier, "baggage"))
        if not header:
            return context
        count = 0
        length = 0
        for raw in header.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            length += len(member) + (1 if count else 0)
            if count >= self.max_members or length > self.max_length:
                break
            key, sep, rest = member.partition("=")
            key = key.strip(" \t")
            value = rest.split(";", 1)[0].strip(" \t")
            if (
                not sep
                or not _TOKEN.fullmatch(key)
                or not _BAGGAGE_VALUE.fullmatch(value)
            ):
                continue
            try:
                decoded = urllib.parse.unquote(value, errors="strict")
            except UnicodeDecodeError:
                continue
            context = otel_baggage.set_baggage(key, decoded, context)
            count += 1
        return context

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write the baggage of *context* (default: current), within the limits."""
        entries = otel_baggage.get_all(context)
        if not entries:
            return
        members: list[str] = []
        length = 0
        for key, value in entries.items():
            if not _TOKEN.fullmatch(str(key)):
                continue
            member = f"{key}={urllib.parse.quote(str(value), safe=_BAGGAGE_SAFE)}"
            if (
                len(members) >= self.max_members
                or length + len(member) + (1 if members else 0) > self.max_length
            ):
                break
            length += len(member) + (1 if members else 0)
            members.append(member)
        if members:
            setter.set(carrier, "baggage", ",".join(members))
