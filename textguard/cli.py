"""The `textguard` command: corpus maintenance, checks, the proxy and check API, the demo
(see README for the contract)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from textguard import telemetry
from textguard._redis import REDIS_ERRORS, connect_sync
from textguard.audit import AuditReader, write_entries
from textguard.corpus import Corpus, check_files, documents_in
from textguard.errors import ConfigError, StoreUnavailableError, TextGuardError
from textguard.guard import Guard
from textguard.policy import Verdict
from textguard.settings import Settings

EXIT_ERROR = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textguard",
                                     description="Guard LLM answers against copying a protected corpus.")
    parser.add_argument("--redis-url", help="redis://, rediss://, unix:// or redis+cluster://host:port[,host:port...] "
                                            "URL (env TEXTGUARD_REDIS_URL); default: the embedded Redis under --home")
    parser.add_argument("--home", help="data directory of the embedded Redis (env TEXTGUARD_HOME)")
    parser.add_argument("--index", help="index name inside Redis (env TEXTGUARD_INDEX; default 'default')")
    parser.add_argument("--config", help="TOML settings file (env TEXTGUARD_CONFIG; default ./textguard.toml)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    corpus_parser = commands.add_parser("corpus", help="manage the protected corpus")
    corpus = corpus_parser.add_subparsers(dest="action", required=True)
    add = corpus.add_parser("add", help="index .txt (one work per file) or .jsonl files")
    add.add_argument("paths", nargs="+", type=Path)
    add.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add.add_argument("--workers", type=_positive, default=1,
                     help="processes that segment, sketch and write (default 1)")
    remove = corpus.add_parser("remove", help="take documents down (nothing of them stays in Redis)")
    remove.add_argument("ids", nargs="+")
    listing = corpus.add_parser("list", help="list indexed documents")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    stats = corpus.add_parser("stats", help="size of the index")
    stats.add_argument("--json", action="store_true")

    check = commands.add_parser("check", help="check one text (a file, or - for standard input)")
    check.add_argument("file", nargs="?", default="-")
    check.add_argument("--json", action="store_true", help="print the verdict as one JSON object")

    audit_parser = commands.add_parser("audit", help="read the audit log of verdicts")
    audit = audit_parser.add_subparsers(dest="action", required=True)
    tail = audit.add_parser("tail", help="the latest entries (and, with -f, new ones as they come)")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many of the latest entries (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries until Ctrl-C")
    export = audit.add_parser("export", help="entries between two times, as JSON lines or CSV")
    export.add_argument("--since", help="ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T08:00:00+08:00)")
    export.add_argument("--until", help="ISO 8601 time")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--out", type=Path, help="write here instead of standard output")

    proxy = commands.add_parser("proxy", help="guarded reverse proxy in front of an OpenAI-compatible server, "
                                              "with the check API")
    upstream = proxy.add_mutually_exclusive_group()
    upstream.add_argument("--upstream", help="base URL of the upstream server, e.g. http://127.0.0.1:8001 "
                                             "(env TEXTGUARD_UPSTREAM_URL)")
    upstream.add_argument("--no-upstream", action="store_true", help="serve the check API alone")
    serve = commands.add_parser("serve", help="serve the check API alone (as proxy --no-upstream)")
    demo = commands.add_parser("demo", help="the one-command tour: sample works, a demo model and the guarded "
                                            "proxy in front of it, on the embedded defaults")
    for served in (proxy, serve, demo):
        served.add_argument("--host", help="address to listen on (env TEXTGUARD_HOST; default 127.0.0.1)")
        served.add_argument("--port", type=int, help="port to listen on, 0 for any free one "
                                                     "(env TEXTGUARD_PORT; default 8000)")
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _settings(args: argparse.Namespace) -> Settings:
    served = {name: getattr(args, name, None) for name in ("host", "port")}
    return Settings.load(config_file=args.config, redis_url=args.redis_url, home=args.home, index=args.index,
                         **served)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
        telemetry.configure_logging(level, json_lines=_settings(args).log_format == "json")
        if args.command == "corpus":
            return _corpus(args)
        if args.command == "audit":
            return _audit(args)
        if args.command in ("proxy", "serve"):
            return _serve(args)
        if args.command == "demo":
            from textguard.demo import run_demo  # the demo's model and samples load only here

            run_demo(_settings(args))
            return 0
        return _check(args)
    except TextGuardError as exc:
        print(f"textguard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("textguard: interrupted", file=sys.stderr)
        return 130


def _corpus(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "add":
        # read every file through once first: bad input must fail before anything is indexed
        total = check_files(args.paths)
        with Corpus(settings) as corpus, tqdm(total=total, unit="char", unit_scale=True, desc="indexing",
                                               disable=args.quiet, file=sys.stderr) as bar:
            report = corpus.add(documents_in(args.paths), progress=bar.update, workers=args.workers,
                                expected_chars=total)
        print(f"added {report.added}, replaced {report.replaced}, unchanged {report.unchanged} "
              f"({report.characters:,} characters)")
        return 0
    with Corpus(settings) as corpus:
        if args.action == "remove":
            missing = corpus.remove(args.ids)
            for doc_id in missing:
                print(f"textguard: not in the index: {doc_id}", file=sys.stderr)
            print(f"removed {len(args.ids) - len(missing)}")
            return EXIT_ERROR if missing else 0
        if args.action == "list":
            for meta in corpus.list():
                if args.json:
                    print(json.dumps(meta, ensure_ascii=False))
                else:
                    print("\t".join([meta["id"], meta.get("work", ""), meta.get("title", ""),
                                     meta.get("author", ""), str(meta.get("chars", ""))]))
            return 0
        stats = corpus.stats()
        if args.json:
            print(json.dumps(stats, ensure_ascii=False))
        else:
            for key, value in stats.items():
                print(f"{key}: {value}")
        return 0


def _read_input(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(name).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _InputError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise _InputError(f"{name}: cannot read ({exc.strerror})") from exc


class _InputError(TextGuardError):
    pass


def _check(args: argparse.Namespace) -> int:
    text = _read_input(args.file)
    guard = Guard(_settings(args))
    try:
        verdict = guard.check_sync(text, fail_mode="raise")
    finally:
        guard.close()
    if args.json:
        print(json.dumps(verdict.to_dict(), ensure_ascii=False))
    else:
        _print_verdict(text, verdict, sys.stdout.isatty())
    return 0


def _audit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    client = connect_sync(settings)
    reader = AuditReader(client, settings.index)
    try:
        if args.action == "tail":
            for entry in reader.latest(args.lines):
                print(json.dumps(entry.to_dict(), ensure_ascii=False), flush=True)
            if args.follow:
                for entry in reader.follow():
                    print(json.dumps(entry.to_dict(), ensure_ascii=False), flush=True)
            return 0
        entries = reader.between(_time_arg(args.since, "--since"), _time_arg(args.until, "--until"))
        with (args.out.open("w", encoding="utf-8", newline="") if args.out else contextlib.nullcontext(sys.stdout)) \
                as out:
            count = write_entries(entries, out, args.format)
        print(f"exported {count} audit entries", file=sys.stderr)
        return 0
    except REDIS_ERRORS as exc:
        raise StoreUnavailableError(f"Redis error: {exc}") from exc
    finally:
        client.close()


def _time_arg(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without a zone is local time
    return moment.timestamp()


def _serve(args: argparse.Namespace) -> int:
    from textguard.server import serve  # the serving stack loads only for these commands

    settings = _settings(args)
    if args.command == "serve" or args.no_upstream:
        settings = settings.replace(upstream_url=None)
    elif args.upstream:
        settings = settings.replace(upstream_url=args.upstream)
    elif not settings.upstream_url:
        raise ConfigError("proxy needs --upstream URL (or TEXTGUARD_UPSTREAM_URL), or --no-upstream")
    if settings.upstream_url and not settings.upstream_url.startswith(("http://", "https://")):
        raise ConfigError(f"--upstream must be an http:// or https:// URL, got {settings.upstream_url!r}")

    def announce(url: str) -> None:
        guarding = f", guarding {settings.upstream_url}" if settings.upstream_url else " (check API only)"
        print(f"textguard listening on {url}{guarding}; check API at {url}/v1/textguard/check", flush=True)

    serve(settings, on_ready=announce)
    return 0


def _print_verdict(text: str, verdict: Verdict, colour: bool) -> None:
    mark = ("\x1b[1;31m", "\x1b[0m") if colour else ("【", "】")
    print(f"verdict: {verdict.verdict}  ({verdict.checked_chars} chars checked in {verdict.elapsed_ms:.1f} ms)")
    for kind, matches in (("copied", verdict.matches), ("quotation (passed)", verdict.quotations)):
        for m in matches:
            print(f"\n{kind}: [{m.start}, {m.end}) from 《{m.work or m.title}》 {m.title} {m.author} "
                  f"(id {m.doc_id}, source [{m.source_start}, {m.source_end}), "
                  f"longest verbatim run {m.verbatim_chars}, similarity {m.similarity:.2f})")
            before, after = text[max(0, m.start - 20):m.start], text[m.end:m.end + 20]
            print(f"  …{before}{mark[0]}{text[m.start:m.end]}{mark[1]}{after}…")
    if verdict.verdict != "allow":
        print(f"\ntext after {verdict.verdict}:\n{verdict.text}")


if __name__ == "__main__":
    sys.exit(main())
