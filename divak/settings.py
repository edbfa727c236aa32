"""Reading settings and environment variables, with errors that name them."""

from __future__ import annotations

import os
import typing

__all__ = ["number_setting", "parse_bool", "setting"]

_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "off", "n", "f", ""})

Number = typing.TypeVar("Number", int, float)


def parse_bool(value: str | bool | int | None, name: str = "value") -> bool:
    """Read a boolean the way people write it in the environment.

    :param value: ``1``/``0``, ``true``/``false``, ``yes``/``no``,
        ``on``/``off`` in any case, or a :class:`bool`; :data:`None` is false
    :param name: what the value is, for the error message
    :raises ValueError: for anything else
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return value != 0
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, not {value!r}")


def setting(
    settings: typing.Mapping[str, typing.Any],
    key: str,
    env: str | None,
    default: typing.Any,
) -> tuple[typing.Any, str]:
    """Return a setting's value and where it came from.

    ``settings[key]`` when set (not :data:`None`), else the environment
    variable *env* when set and not empty, else *default*.

    :param settings: the application settings
    :param key: the settings key
    :param env: the environment variable, or :data:`None` for none
    :param default: the value when neither is set
    :returns: ``(value, source)``, *source* naming the setting or the
        variable for error messages (``"settings['port']"``, ``"PORT"``)
    """
    if settings.get(key) is not None:
        return settings[key], f"settings[{key!r}]"
    if env is not None and os.environ.get(env):
        return os.environ[env], env
    return default, f"settings[{key!r}]"


def number_setting(
    settings: typing.Mapping[str, typing.Any],
    key: str,
    env: str | None,
    default: Number,
    kind: type[Number] | None = None,
) -> Number:
    """Read a numeric setting (see :func:`setting`) as ``int`` or ``float``.

    :param kind: :class:`int` or :class:`float`; default the type of
        *default*
    :raises ValueError: naming the setting or the environment variable and
        the value, e.g. ``PORT must be an integer, not 'http'``
    """
    kind = kind or type(default)
    value, source = setting(settings, key, env, default)
    if isinstance(value, bool):
        value = str(value)  # True is not a port number
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{source} must be {what}, not {value!r}") from None
