"""The surfaces that serve HTTP: the middleware, the proxy, the check API and the app that
puts them together (`server`). Only the middleware is imported here; the rest loads when a
server starts."""

from textguard.serve.middleware import TextGuardMiddleware

__all__ = ["TextGuardMiddleware"]
