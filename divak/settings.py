"""Reading settings and environment variables: one reader per kind of value.

Application settings and divak's own variables (``PORT``, ``DEBUG``...)
raise an error that names them when invalid (:func:`setting`,
:func:`number_setting`, :func:`parse_bool`).  The ``OTEL_*`` variables of
OpenTelemetry's SDK specification follow the specification's rule instead:
an invalid value is logged once as a WARNING (logger ``divak.environment``)
and the default is used (:func:`env_value`, :func:`integer_variable`,
:func:`milliseconds_variable`, :func:`names_variable`,
:func:`boolean_variable`).  :func:`sdk_disabled` reads
``OTEL_SDK_DISABLED``, which turns off every signal divak exports.
"""

from __future__ import annotations

import logging
import os
import threading
import typing

__all__ = [
    "boolean_variable",
    "entry_point_factories",
    "env_value",
    "integer_variable",
    "milliseconds_variable",
    "names_variable",
    "number_setting",
    "parse_bool",
    "sdk_disabled",
    "setting",
    "warn_once",
]

logger = logging.getLogger("divak.environment")

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


_warned_lock = threading.Lock()
_warned: set[str] = set()


def env_value(name: str) -> str:
    """The environment variable *name*, stripped; ``""`` when not set."""
    return os.environ.get(name, "").strip()


def warn_once(key: str, message: str, *args: object) -> None:
    """Log *message* as a WARNING the first time *key* is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def milliseconds_variable(name: str, default: float) -> float:
    """The duration in the variable *name* (milliseconds, the specification's
    unit), in seconds; *default* (seconds) when not set or invalid."""
    value = env_value(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0:
        logger.warning("ignoring %s=%r: not a number of milliseconds", name, value)
        return default
    return number / 1000


def boolean_variable(name: str) -> bool:
    """The boolean in the environment variable *name*, by the specification's rule.

    ``true`` in any case is true; anything else, unset and empty included,
    is false, and a value other than ``false`` or empty is logged once as
    a WARNING (OpenTelemetry's SDK environment-variable specification).
    """
    value = env_value(name).lower()
    if value == "true":
        return True
    if value not in ("", "false"):
        warn_once(
            f"{name}:{value}", "reading %s=%r as false: not true or false", name, value
        )
    return False


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED``: :data:`True` when OpenTelemetry's SDK is off.

    Then OpenTelemetry's SDK providers hand out no-op tracers, meters and
    loggers, and divak exports nothing either: no metrics (its
    :class:`~divak.MetricsHandler` answers 404, naming the variable), no
    log records (``OTEL_LOGS_EXPORTER`` is not read).  Requests are still
    served and logged.
    """
    return boolean_variable("OTEL_SDK_DISABLED")


def integer_variable(name: str, default: int) -> int:
    """The positive integer in the environment variable *name*, else *default*.

    An invalid value is logged as a WARNING and *default* is used.
    """
    value = env_value(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        logger.warning("ignoring %s=%r: not a positive integer", name, value)
        return default
    return number


def names_variable(
    variable: str, value: str, known: typing.Iterable[str]
) -> list[str]:
    """The names listed in *value* (a comma-separated variable), once each.

    ``none`` anywhere gives none; a name outside *known* is logged once as
    a WARNING and skipped.

    :param variable: the variable's name, for the warning
    :param value: its value (or the default)
    :param known: the names the caller can build
    """
    known = list(known)
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    if "none" in names:
        return []
    valid = []
    for name in dict.fromkeys(names):
        if name in known:
            valid.append(name)
        else:
            warn_once(
                f"{variable}:{name}",
                "ignoring %r in %s: divak knows %s",
                name,
                variable,
                ", ".join([*known, "none"]),
            )
    return valid


def entry_point_factories(
    group: str, exclude: typing.Iterable[str] = ()
) -> dict[str, typing.Callable[[], typing.Any]]:
    """The factories other installed packages register under entry point *group*.

    OpenTelemetry's SDK resolves the names of ``OTEL_PROPAGATORS`` and
    ``OTEL_TRACES_EXPORTER`` through the entry point groups
    ``opentelemetry_propagator`` and ``opentelemetry_traces_exporter``; divak
    does the same for the names it has no built-in for.  Each factory
    loads its entry point and calls the loaded object with no arguments;
    one that fails to load or to build logs a WARNING once and returns
    :data:`None`.

    :param group: the entry point group
    :param exclude: names that must not be taken from entry points (divak's
        built-ins win)
    :returns: ``{name: factory}``
    """
    # Read only when a variable names something divak has no built-in for:
    # scanning the installed distributions costs milliseconds at import.
    import importlib.metadata

    excluded = set(exclude)
    factories: dict[str, typing.Callable[[], typing.Any]] = {}
    for entry_point in importlib.metadata.entry_points(group=group):
        name = entry_point.name.lower()
        if name not in excluded and name not in factories:
            factories[name] = _entry_point_factory(group, entry_point)
    return factories


def _entry_point_factory(
    group: str, entry_point: typing.Any
) -> typing.Callable[[], typing.Any]:
    def build() -> typing.Any:
        try:
            return entry_point.load()()
        except Exception as error:  # noqa: BLE001 - a broken plug-in is skipped
            warn_once(
                f"{group}:{entry_point.name}",
                "ignoring %r (entry point %s of %s): %s: %s",
                entry_point.name,
                entry_point.value,
                group,
                type(error).__name__,
                error,
            )
            return None

    return build


def otlp_endpoint(signal: str) -> str:
    """The OTLP/HTTP endpoint of *signal* the environment names.

    As the OpenTelemetry specification's OTLP exporter configuration says:
    ``OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`` as it is; else
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``/v1/{signal}`` appended; else
    ``http://localhost:4318/v1/{signal}``.

    :param signal: ``"traces"``, ``"metrics"`` or ``"logs"``
    """
    endpoint = env_value(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if endpoint:
        return endpoint
    base = env_value("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.rstrip('/')}/v1/{signal}"
