"""divak's version, in one place: the package's ``__version__``, the
instrumentation scope version of its tracer and meter."""

__version__ = "0.1.0"
