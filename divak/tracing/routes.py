"""Route templates: the low-cardinality name of what a request matched.

The SERVER span's name (``GET /items/{item_id}``), its ``http.route``
attribute and the request metrics use the template of the URL rule that
routed the request, never the raw path.  Templates come from Tornado's own
:meth:`tornado.routing.PathMatches.reverse`, with each capturing group
shown as ``{name}`` (named groups) or ``{0}``, ``{1}``... (unnamed ones).
A pattern too complex for Tornado to reverse keeps its regular
expression as written (without ``^`` and ``$``).
"""

from __future__ import annotations

import typing

from tornado import routing, web

__all__ = ["RouteTable", "route_template"]


def route_template(matcher: routing.Matcher | str) -> str:
    """The route template of a URL rule's *matcher* (or pattern string).

    ``r"/items/(?P<item_id>[^/]+)"`` gives ``"/items/{item_id}"``,
    ``r"/a/([0-9]+)/(\\w+)"`` gives ``"/a/{0}/{1}"``.

    :param matcher: a :class:`tornado.routing.PathMatches` (what a
        :class:`tornado.web.URLSpec` holds) or a URL pattern
    """
    if isinstance(matcher, str):
        matcher = routing.PathMatches(matcher)
    if not isinstance(matcher, routing.PathMatches):
        return "/"
    regex = matcher.regex
    names = {index: name for name, index in regex.groupindex.items()}
    placeholders = [f"divakroutegroup{index}z" for index in range(regex.groups)]
    try:
        path = matcher.reverse(*placeholders)
    except (ValueError, AssertionError):
        path = None
    if path is None:
        pattern = regex.pattern
        if pattern.startswith("^"):
            pattern = pattern[1:]
        if pattern.endswith("$") and not pattern.endswith("\\$"):
            pattern = pattern[:-1]
        return pattern or "/"
    unnamed = 0
    for index, placeholder in enumerate(placeholders, start=1):
        name = names.get(index)
        if name is None:
            name = str(unnamed)
            unnamed += 1
        path = path.replace(placeholder, "{" + name + "}")
    return path or "/"


def _walk_rules(router: routing.RuleRouter) -> typing.Iterator[routing.Rule]:
    for rule in router.rules:
        yield rule
        if isinstance(rule.target, routing.RuleRouter):
            yield from _walk_rules(rule.target)


class RouteTable:
    """Route templates of one application's handler classes.

    Built from the application's rules on first use and again when a
    handler class it does not know shows up (``add_handlers`` after
    start-up).

    :param application: the application whose rules are read
    """

    __slots__ = ("application", "_table")

    def __init__(self, application: web.Application) -> None:
        self.application = application
        self._table: dict[type, list[tuple[typing.Any, str]]] | None = None

    def _build(self) -> dict[type, list[tuple[typing.Any, str]]]:
        table: dict[type, list[tuple[typing.Any, str]]] = {}
        application = self.application
        for router in (application.wildcard_router, application.default_router):
            for rule in _walk_rules(router):
                matcher = rule.matcher
                if isinstance(rule.target, type) and isinstance(
                    matcher, routing.PathMatches
                ):
                    entry = (matcher.regex, route_template(matcher))
                    if entry not in table.setdefault(rule.target, []):
                        table[rule.target].append(entry)
        return table

    def template(self, handler_class: type, path: str) -> str | None:
        """The template of the rule that routed *path* to *handler_class*.

        :param handler_class: the :class:`~tornado.web.RequestHandler`
            subclass serving the request
        :param path: the request's path
        :returns: the template, or :data:`None` when no rule of the
            application names the class (Tornado's 404 handler, a
            ``default_handler_class``)
        """
        table = self._table
        routes = table.get(handler_class) if table is not None else None
        if routes is None:
            table = self._table = self._build()
            routes = table.setdefault(handler_class, [])
        if len(routes) == 1:
            return routes[0][1]
        for regex, template in routes:
            if regex.match(path):
                return template
        return None
