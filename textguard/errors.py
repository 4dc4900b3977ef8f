"""Exceptions a caller may want to tell apart. Every message is one line a person can act on."""

__all__ = [
    "CheckSkipped", "ConfigError", "CorpusInputError", "IndexMismatchError", "StoreUnavailableError",
    "TextGuardError",
]


class TextGuardError(Exception):
    """Base class of textguard's own errors."""


class ConfigError(TextGuardError):
    """A setting, settings file or argument is invalid."""


class IndexMismatchError(TextGuardError):
    """The index in Redis was built with other parameters or another format version."""


class StoreUnavailableError(TextGuardError):
    """Redis could not be reached or answered with an error."""


class CorpusInputError(TextGuardError):
    """A corpus file or document cannot be read (encoding, JSON, missing fields)."""


class CheckSkipped(TextGuardError):
    """A check could not run in time or without Redis; `reason` says which."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"check skipped ({reason}){': ' + detail if detail else ''}")
        self.reason = reason
