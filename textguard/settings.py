"""One settings object for every surface: defaults < TOML file < environment < arguments.

Environment variables are the field names upper-cased with a `TEXTGUARD_` prefix
(`TEXTGUARD_QUOTE_CHARS=80`). The TOML file is the one named by `config_file=` or
`TEXTGUARD_CONFIG`, else `textguard.toml` in the working directory if present; its keys are the
field names, at top level or under a `[textguard]` table.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs

from textguard.errors import ConfigError

__all__ = ["DEFAULT_CONFIG_FILE", "ENV_PREFIX", "Settings"]

ENV_PREFIX = "TEXTGUARD_"
DEFAULT_CONFIG_FILE = "textguard.toml"


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("textguard", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    # Where the index lives.
    redis_url: str | None = None
    """redis://, rediss://, unix://, redis+cluster://host:port[,host:port...] (rediss+cluster:// for
    TLS); None starts the embedded Redis under `home`."""
    home: Path = field(default_factory=_default_home)
    """Data directory of the embedded Redis (and anything else kept on disk)."""
    index: str = "default"
    """Name of the index inside Redis, so that several corpora can share one server."""

    # How text is sketched. These are recorded in the index and must match it.
    threshold: float = 0.5
    """Jaccard similarity of two windows that the LSH is tuned to find."""
    num_perm: int = 4
    """MinHash permutations per window; LSH bands x rows are chosen from these."""
    window_shingles: int = 16
    """Shingles per sliding window (about 28 Chinese characters)."""
    shingle_tokens: int = 2
    """Tokens per shingle (token n-grams)."""
    seed: int = 1
    bucket_bits: int | None = None
    """Band entries are spread over 2**bucket_bits Redis hashes. None: a new index chooses (16 or
    more) from the corpus it is created with and Redis's small-hash limit; then the index's own."""
    max_postings: int = 6
    """Documents remembered per band value; commoner values carry no signal."""
    user_dict: Path | None = None
    """Optional jieba user dictionary (recorded in the index: it changes segmentation)."""

    # What counts as copying.
    quote_chars: int = 50
    """Q: spans shorter than this many normalised characters pass as quotation."""
    mosaic_chars: int = 100
    """Spans from one work that add up to this many characters are copying even if short."""
    block_ratio: float = 0.5
    """Block when flagged text covers this share of the answer..."""
    block_chars: int = 500
    """...or this many normalised characters."""
    rewrite_style: Literal["notice", "quote", "paraphrase"] = "notice"
    """What replaces a copied span: the notice; ("quote") its opening as a quotation naming
    author and work (著作权法 第二十四条), shorter than Q and once per work per answer, then the
    notice for the rest; or ("paraphrase", whole answers only) a restatement by a model, checked
    again before it is released. A request may ask for another (header
    `X-TextGuard-Rewrite-Style`, the check API's `rewrite_style`)."""
    paraphrase_fallback: Literal["notice", "quote"] = "quote"
    """What a paraphrase not released (copied again, failed, out of time) and a stream get."""
    paraphrase_url: str | None = None
    """Base URL (…/v1) of the OpenAI-compatible model asked to restate copies; None: the app the
    middleware guards, or the proxy's upstream (the client's Authorization goes with it)."""
    paraphrase_model: str | None = None
    """The model asked; None: the model that gave the answer (the check API's `model`)."""
    paraphrase_api_key: str | None = field(default=None, repr=False)
    """Bearer token sent to `paraphrase_url`."""
    paraphrase_attempts: int = 2
    """Restatements tried (each of what the last one still copied) before falling back."""
    paraphrase_timeout_ms: float = 20_000.0
    """Longest the model may take over one answer's restatements, all its texts and attempts together."""
    request_rewrite_styles: tuple[str, ...] = ("notice", "quote", "paraphrase")
    """The styles a request may ask for (header, check API field, LiteLLM params); another is
    refused (400). Narrow it where clients must not spend the paraphrasing model."""
    paraphrase_prompt: str = ("请用你自己的话转述下面这段文字的意思。不要沿用原文的句子和措辞，不要引用原文，"
                              "不要解释，只输出转述，篇幅与原文相近。\n\n{text}")
    """The instruction sent with each copied span (`{text}`)."""
    notice: str = "〔此处省略受著作权保护的内容，出自《{work}》〕"
    """Replaces a copied span; `{work}`, `{title}`, `{author}` and `{doc_id}` are filled in."""
    block_message: str = "〔该回答大段复制了受著作权保护的作品（《{works}》），已被拦截〕"
    """Replaces a blocked answer; `{works}` lists the works copied."""
    unchecked_message: str = "〔未能完成著作权核查，按设置不予输出该回答〕"
    """Replaces an answer blocked because it could not be checked (fail mode closed)."""

    # Where the middleware looks.
    guard_paths: tuple[str, ...] = (
        "/v1/chat/completions", "/v1/chat/completions/batch", "/v1/completions", "/v1/responses",
        "/v1/responses/resp_*", "/v1/messages", "/invocations", "/api/chat", "/api/generate", "/generate",
        "/cohere/v2/chat")
    """Request paths whose answers are guarded (comma-separated in the environment; shell-style
    patterns): the text routes of vLLM, SGLang and Ollama. An answer there in a format textguard
    cannot read is a skipped check, never passed as checked."""
    expose_matches: bool = False
    """Add a `textguard` field with the verdict and matches to guarded JSON answers."""

    # How a stream is guarded.
    stream_holdback_chars: int = 12
    """Normalised characters a stream keeps unreleased beyond what a check has cleared. A copy
    is released only until the index sees it; verbatim copies are seen by 51 characters
    (benchmarks/quality.py), so Q + this margin covers them with room for edited ones."""
    stream_check_chars: int = 16
    """A stream is checked again once this many new normalised characters arrived (three times
    as many while a flagged copy is still running at the end: its text is held anyway)."""

    # How a check runs.
    check_timeout_ms: float = 100.0
    """What one check of an answer in the middleware and proxy should take. One that runs past
    it is not cut short: the answer's text stays held (the reader waits) until the check ends,
    or `check_ceiling_ms` passes; the waits are measured."""
    check_ceiling_ms: float = 5000.0
    """Longest an answer waits for one check (a Redis that times out is asked again meanwhile);
    only past this, or with Redis unreachable, does the fail mode decide."""
    fail_mode: Literal["open", "closed"] = "open"
    """What to do when a check cannot run: pass the text (open) or block it (closed)."""
    redis_timeout_s: float = 0.5
    """Socket connect and read timeout; redis-py's 5 s default would stall requests."""
    max_check_chars: int = 200_000
    """Longest answer checked; a longer one is a skipped check (`too_large`): the fail mode decides."""

    # What evaluations rest on.
    min_sample_answers: int = 1000
    """Answers a scan's rates should rest on (TC260 practice: at least 1,000 generated-content
    test questions); a summary of fewer says so."""

    # What is kept of what the guard did.
    audit: Literal["off", "flagged", "all"] = "flagged"
    """Audit log (a Redis Stream): every non-allow or skipped verdict, every check, or nothing."""
    audit_max_entries: int = 100_000
    """The audit stream is trimmed to about this many entries."""
    audit_text: bool = False
    """Also log the flagged spans' text (off: the log holds ids, offsets and scores only)."""
    log_format: Literal["text", "json"] = "text"
    """Logs on stderr as text lines or JSON lines; both carry the request id."""

    # How the proxy and the check API serve.
    host: str = "127.0.0.1"
    """Address the proxy and check API listen on; loopback unless you mean to expose them."""
    port: int = 8000
    upstream_url: str | None = None
    """The OpenAI-compatible server the proxy forwards /v1 to (`--upstream`)."""
    upstream_connect_timeout_s: float = 5.0
    upstream_read_timeout_s: float = 300.0
    """Longest silence from the upstream (between bytes), e.g. while a model thinks."""
    max_request_bytes: int = 10 * 1024 * 1024
    """Largest request body accepted (413 beyond it)."""
    api_check_timeout_ms: float = 2000.0
    """Time budget of one check through the check API (texts there may be long)."""
    api_token: str | None = field(default=None, repr=False)
    """Bearer token the check API and the LiteLLM endpoint demand when set (unset: open to
    whoever reaches them, which tells them what the corpus holds)."""
    admin_token: str | None = field(default=None, repr=False)
    """Bearer token for the corpus admin endpoints, which exist only when it is set."""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Build settings from the TOML file, the environment and `overrides` (None = unset)."""
        values: dict[str, Any] = {}
        path = config_file or os.environ.get(ENV_PREFIX + "CONFIG")
        if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
            path = DEFAULT_CONFIG_FILE
        if path is not None:
            values.update(_read_toml(Path(path)))
        for f in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        converted = {name: _convert(name, value, hints[name]) for name, value in values.items()}
        settings = cls(**converted)
        settings._validate()
        return settings

    def _validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {self.threshold}")
        if self.fail_mode not in ("open", "closed"):
            raise ConfigError(f"fail_mode must be 'open' or 'closed', got {self.fail_mode!r}")
        if self.audit not in ("off", "flagged", "all"):
            raise ConfigError(f"audit must be 'off', 'flagged' or 'all', got {self.audit!r}")
        for name in ("num_perm", "window_shingles", "shingle_tokens", "quote_chars",
                     "mosaic_chars", "block_chars", "max_postings", "max_check_chars", "audit_max_entries",
                     "paraphrase_attempts", "min_sample_answers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_request_bytes", "port"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("api_token", "admin_token"):
            token = getattr(self, name)
            if token is not None and len(token) < 16:
                raise ConfigError(f"{name} must be at least 16 characters long")
        if "{text}" not in self.paraphrase_prompt:
            raise ConfigError("paraphrase_prompt must contain {text}, where the copied span goes")
        unknown_styles = set(self.request_rewrite_styles) - {"notice", "quote", "paraphrase"}
        if unknown_styles:
            raise ConfigError(f"request_rewrite_styles: unknown style(s) {', '.join(sorted(unknown_styles))}")
        if self.bucket_bits is not None and not 8 <= self.bucket_bits <= 24:
            raise ConfigError(f"bucket_bits must be between 8 and 24, got {self.bucket_bits}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc
    table = data.get("textguard", data)
    if not isinstance(table, dict):
        raise ConfigError(f"settings file {path}: [textguard] must be a table")
    return dict(table)


def _convert(name: str, value: Any, hint: Any) -> Any:
    """Coerce a TOML or environment value to the field's declared type."""
    allowed = [t for t in typing.get_args(hint) if t is not type(None)] if _is_optional(hint) else [hint]
    target = allowed[0]
    if value is None:
        return None
    try:
        if typing.get_origin(target) is Literal:
            if value not in typing.get_args(target):
                raise ValueError(f"expected one of {typing.get_args(target)}")
            return value
        if target is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if target is Path:
            return Path(value).expanduser()
        if typing.get_origin(target) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            return tuple(str(item).strip() for item in items if str(item).strip())
        return target(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {value!r} ({exc})") from exc


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
