"""textguard: stop near-verbatim reproduction of a protected corpus in LLM output."""

from textguard.corpus import AddReport, Corpus, Document
from textguard.detect import Match
from textguard.errors import (
    CheckSkipped,
    ConfigError,
    CorpusInputError,
    IndexMismatchError,
    StoreUnavailableError,
    TextGuardError,
)
from textguard.guard import Guard
from textguard.policy import Verdict
from textguard.serve.middleware import TextGuardMiddleware
from textguard.settings import Settings

__version__ = "0.1.0"
__all__ = [
    "AddReport", "CheckSkipped", "ConfigError", "Corpus", "CorpusInputError", "Document", "Guard",
    "IndexMismatchError", "Match", "Settings", "StoreUnavailableError", "TextGuardError", "TextGuardMiddleware",
    "Verdict",
]
