"""What the guard reports about itself: Prometheus metrics, and logs that carry the request id.

The metrics live in prometheus_client's default registry, so an app that already exports
metrics exports these too; `metrics_app()` is an ASGI app to mount where it does not. The
request id (the caller's `X-Request-ID`, or one made up) sits in a context variable for the
length of a request, and `RequestIdFilter` puts it on every log record.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest, make_asgi_app

from textguard._asgi import ASGIApp

__all__ = [
    "CHECKS",
    "CHECK_SECONDS",
    "CHECK_WAIT_SECONDS",
    "HELD_CHARS",
    "PARAPHRASES",
    "REDIS_ERRORS",
    "SKIPPED",
    "JsonFormatter",
    "RequestIdFilter",
    "configure_logging",
    "exposition",
    "keep_logs_visible",
    "metrics_app",
    "request_id",
]

CHECKS = Counter("textguard_checks", "Checks made, by verdict", ["verdict"])
SKIPPED = Counter("textguard_checks_skipped", "Checks that could not run, by reason "
                  "(redis, timeout, encoding, malformed, too_large); the fail mode decided", ["reason"])
CHECK_SECONDS = Histogram("textguard_check_seconds", "Time one check took",
                          buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0))
PARAPHRASES = Counter("textguard_paraphrases", "Paraphrases asked for, by outcome (released, or why not)",
                      ["outcome"])
REDIS_ERRORS = Counter("textguard_redis_errors", "Redis errors met by checks and the audit log")
CHECK_WAIT_SECONDS = Histogram("textguard_check_wait_seconds", "Time a reader waited for a check beyond "
                               "check_timeout_ms (the answer's text stayed held)",
                               buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
HELD_CHARS = Histogram("textguard_stream_held_chars", "Characters a guarded stream holds back after each check",
                       buckets=(0, 8, 16, 32, 64, 128, 256, 512, 1024))

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("textguard_request_id", default="-")


def metrics_app() -> ASGIApp:
    """An ASGI app serving the metrics in Prometheus' text format, to mount in an app of
    one's own (`app.mount("/metrics", metrics_app())`)."""
    app: ASGIApp = make_asgi_app()
    return app


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record, so formats can say which request a line is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name,
            "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def keep_logs_visible() -> None:
    """A host server that configures logging for its own loggers only would silence textguard's
    warnings, skipped checks among them (vLLM's `dictConfig` disables every logger existing
    before it; a package it imports sets the root logger to ERROR): enable textguard's loggers
    again, let them pass warnings, and give them a stderr handler of their own where nothing
    else would print them."""
    for name, item in list(logging.Logger.manager.loggerDict.items()):
        if (name == "textguard" or name.startswith("textguard.")) and isinstance(item, logging.Logger):
            item.disabled = False
    package = logging.getLogger("textguard")
    if package.getEffectiveLevel() > logging.WARNING:
        package.setLevel(logging.WARNING)
    if not package.hasHandlers():
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s [%(request_id)s] %(message)s"))
        package.addHandler(handler)


def configure_logging(level: int, json_lines: bool = False) -> None:
    """Log to stderr with the request id on every line (as JSON lines if `json_lines`)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
