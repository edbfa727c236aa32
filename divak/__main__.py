"""``python -m divak``: the ``divak`` command (see :mod:`divak.cli`)."""

from divak.cli import main

raise SystemExit(main())
