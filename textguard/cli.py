"""The `textguard` command: corpus maintenance, checks, the proxy and check API, the demo
(see README for the contract)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from textguard import audit_report, comparison, probe, report, scan, summary, telemetry
from textguard._redis import connect_sync, unavailable_on_error
from textguard.audit import AuditReader, write_entries
from textguard.audit_report import AuditQuery, parse_time
from textguard.corpus import Corpus, FieldNames
from textguard.errors import ConfigError, TextGuardError
from textguard.guard import Guard
from textguard.ingest import FORMATS, ReadOptions, add_files, input_bytes
from textguard.policy import Verdict
from textguard.settings import Settings
from textguard.store import DocumentMeta

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
_MALFORMED_SHOWN = 20  # malformed input lines named on stderr; the summary counts them all


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
    add = corpus.add_parser("add", help="index files and folders of them (text in any common Chinese encoding, "
                                         "EPUB, DOCX, HTML, Markdown, PDF, JSONL[.gz|.zst], CSV, Parquet)",
                            description="Read are: " + ", ".join(sorted(FORMATS)) + ". A file that cannot be "
                                        "read is reported and skipped; the exit status is 1 if any was.")
    add.add_argument("paths", nargs="+", type=Path, help="files, or folders (walked recursively)")
    add.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add.add_argument("--workers", type=_positive, default=1,
                     help="processes that segment, sketch and write (default 1)")
    add.add_argument("--dry-run", action="store_true",
                     help="read everything and print the inventory (files, documents, problems); write nothing")
    add.add_argument("--json", action="store_true", help="print the inventory and counts as one JSON object")
    add.add_argument("--public-domain", action="store_true",
                     help="these texts anyone may reproduce: a quotation of them is never flagged, even where a "
                          "protected work quotes them too")
    add.add_argument("--encoding", help="read text, CSV and HTML files in this encoding (default: detected per "
                                        "file among UTF-8/16/32, GB18030 and Big5)")
    add.add_argument("--include", action="append", default=[], metavar="GLOB",
                     help="in folders, read only files matching GLOB (repeatable), e.g. '*.epub'")
    add.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                     help="in folders, pass over files matching GLOB (repeatable)")
    for name in ("id", "text", "title", "author", "work"):
        add.add_argument(f"--{name}-field", default=name, metavar="NAME",
                         help=f"JSONL, CSV and Parquet: the field holding the {name} (default: {name})")
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
    rights = audit.add_parser("report", help="what was flagged, rewritten and blocked of one work or author, "
                                             "per day and per work (no protected text)")
    subject = rights.add_mutually_exclusive_group(required=True)
    subject.add_argument("--work", help="the work, as the index names it (its work field, else its title)")
    subject.add_argument("--author", help="every work of this author")
    rights.add_argument("--since", help="ISO 8601 time (a date alone: its midnight, local time)")
    rights.add_argument("--until", help="ISO 8601 time")
    form = rights.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the report as JSON")
    form.add_argument("--csv", action="store_true", help="print a row per day, then per work, as CSV")
    form.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML page here")

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

    scanning = commands.add_parser("scan", help="check every answer of a file (JSON Lines, or one answer a line)")
    scanning.add_argument("input", help="a .jsonl file, a text file with one answer a line, or - for standard input")
    scanning.add_argument("--out", required=True, type=Path, help="result lines (JSON Lines); a rerun resumes it")
    scanning.add_argument("--report", type=Path, help="also write a self-contained HTML report here")
    scanning.add_argument("--summary", type=Path, help="summary JSON (default: next to --out, as NAME.summary.json)")
    scanning.add_argument("--json", action="store_true", help="print the summary as JSON")
    scanning.add_argument("--baseline", type=Path, metavar="OTHER_OUT.jsonl",
                          help="the results of the same inputs scanned for another model: compare, answer by answer")
    scanning.add_argument("--min-answers", type=int,
                          help="answers the rates should rest on (default: setting min_sample_answers, 1000)")
    scanning.add_argument("--text-field", default="output", help="field holding the answer (default: output)")
    scanning.add_argument("--id-field", default="id", help="field holding the id (default: id; else the line number)")
    scanning.add_argument("--reference-field", help="field holding the true continuation (probes: 'reference')")
    scanning.add_argument("--format", choices=["auto", "jsonl", "text"], default="auto",
                          help="input format (default: by file name, else by the first line)")
    scanning.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    scanning.add_argument("--shard", type=_shard, default=(1, 1), metavar="I/N",
                          help="scan only every N-th line from line I (1 <= I <= N), to split a file across machines")
    scanning.add_argument("--batch", type=int, default=64, help="answers checked together (default 64)")
    scanning.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    probe_parser = commands.add_parser("probe", help="memorisation probes")
    probes = probe_parser.add_subparsers(dest="action", required=True)
    make = probes.add_parser("make", help="write prompts asking a model to continue corpus passages (JSON Lines)")
    make.add_argument("--n", type=int, required=True, help="number of prompts")
    make.add_argument("--prefix-chars", type=int, required=True, help="characters of the passage shown")
    make.add_argument("--reference-chars", type=int, default=200, help="characters of true continuation kept")
    make.add_argument("--seed", type=int, default=0)
    return parser


def _shard(value: str) -> tuple[int, int]:
    index, _, count = value.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, got {value!r}") from None
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {value!r}")
    return shard



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
        if args.command == "scan":
            return _scan(args)
        if args.command == "probe":
            return _probe(args)
        return _check(args)
    except TextGuardError as exc:
        print(f"textguard: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("textguard: interrupted", file=sys.stderr)
        return 130


def _corpus_add(args: argparse.Namespace, settings: Settings) -> int:
    fields = FieldNames(args.id_field, args.text_field, args.title_field, args.author_field, args.work_field)
    options = ReadOptions(encoding=args.encoding, include=tuple(args.include), exclude=tuple(args.exclude),
                          fields=fields, public_domain=args.public_domain)
    with tqdm(total=input_bytes(args.paths, options), unit="B", unit_scale=True, file=sys.stderr,
              desc="reading" if args.dry_run else "indexing", disable=args.quiet) as bar:
        if args.dry_run:
            report, inventory = add_files(None, args.paths, options, progress=bar.update)
        else:
            with Corpus(settings) as corpus:
                report, inventory = add_files(corpus, args.paths, options, progress=bar.update,
                                              workers=args.workers)
    if args.json:
        counts = {} if args.dry_run else {"added": report.added, "replaced": report.replaced,
                                          "unchanged": report.unchanged, "characters": report.characters}
        print(json.dumps({**counts, "inventory": inventory.to_dict()}, ensure_ascii=False))
    else:
        print(inventory.summary())
        if not args.dry_run:
            print(f"added {report.added}, replaced {report.replaced}, unchanged {report.unchanged} "
                  f"({report.characters:,} characters)")
    return EXIT_ERROR if inventory.problems else 0


def _terms(meta: DocumentMeta) -> str:
    """What sets a document apart from the settings, for `corpus list`."""
    terms = ["public domain"] if meta.get("public_domain") else []
    terms += [f"{name}={meta[name]}" for name in ("policy", "quote_chars") if meta.get(name)]
    return " ".join(terms)


def _corpus(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "add":
        return _corpus_add(args, settings)
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
                    print("\t".join([meta["id"], meta.get("work", ""), meta.get("title", ""), meta.get("author", ""),
                                     str(meta.get("chars", "")), _terms(meta)]).rstrip("\t"))
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
    if args.action == "report":
        return _audit_report(args, settings)
    client = connect_sync(settings)
    reader = AuditReader(client, settings.index)
    with contextlib.closing(client), unavailable_on_error():
        if args.action == "tail":
            for entry in reader.latest(args.lines):
                print(json.dumps(entry.to_dict(), ensure_ascii=False), flush=True)
            if args.follow:
                for entry in reader.follow():
                    print(json.dumps(entry.to_dict(), ensure_ascii=False), flush=True)
            return 0
        entries = reader.between(parse_time(args.since, "--since"), parse_time(args.until, "--until"))
        with (args.out.open("w", encoding="utf-8", newline="") if args.out else contextlib.nullcontext(sys.stdout)) \
                as out:
            count = write_entries(entries, out, args.format)
        print(f"exported {count} audit entries", file=sys.stderr)
        return 0



def _audit_report(args: argparse.Namespace, settings: Settings) -> int:
    query = AuditQuery(args.work, args.author, parse_time(args.since, "--since"), parse_time(args.until, "--until"))
    with unavailable_on_error():
        result = audit_report.report(settings, query)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif args.csv:
        print(audit_report.render_csv(result), end="")
    elif args.html:
        args.html.write_text(audit_report.render_html(result), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    else:
        print(audit_report.format_report(result))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from textguard.serve.server import serve  # the serving stack loads only for these commands

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


def _scan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    options = scan.ScanOptions(args.input, args.out, args.text_field, args.id_field, args.reference_field,
                               args.format, args.workers, args.shard, args.batch)
    total = scan.count_lines(options)  # (also says at once when the input cannot be read)
    scan.ensure_ready(settings).close()  # and when Redis or the index cannot be used
    if args.baseline is not None:
        comparison.check_baseline(args.baseline)
    if args.min_answers is not None and args.min_answers < 1:
        raise ConfigError(f"--min-answers must be at least 1, got {args.min_answers}")
    if args.report is not None:
        taken = {Path(args.input).resolve(), options.out.resolve(),
                 *((args.baseline.resolve(),) if args.baseline else ())}
        clash = [p for p in (args.report, *report.companions(args.report)) if p.resolve() in taken]
        if clash:
            raise ConfigError(f"--report {args.report} would write {clash[0]}, which this scan reads or writes")
    reported = 0
    with tqdm(total=total, unit="answer", desc="scanning", disable=args.quiet,
              file=sys.stderr) as bar:
        def malformed(entry: scan.Malformed) -> None:
            nonlocal reported
            reported += 1
            if reported <= _MALFORMED_SHOWN:
                bar.write(f"textguard: {args.input}:{entry.line}: {entry.reason}; skipped", file=sys.stderr)
            elif reported == _MALFORMED_SHOWN + 1:
                bar.write("textguard: further malformed lines are counted in the summary", file=sys.stderr)

        counts = scan.run_scan(settings, options, progress=bar.update, on_malformed=malformed)
    minimum = args.min_answers if args.min_answers is not None else settings.min_sample_answers
    totals = summary.summarise(scan.read_results(options.out), counts, quote_chars=settings.quote_chars,
                               min_answers=minimum)
    totals["provenance"] = summary.provenance(settings)
    compared: scan.ScanError | None = None
    if args.baseline is not None:
        try:
            totals["comparison"] = comparison.compare_runs(scan.read_results(options.out), args.baseline,
                                                           quote_chars=settings.quote_chars,
                                                           provenance=totals["provenance"])
        except scan.ScanError as exc:  # the summary and report are still written; then this is said
            compared = exc
    summary_path = args.summary or options.out.with_name(options.out.stem + ".summary.json")
    summary_path.write_text(json.dumps(totals, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    if args.report:
        report.write_report(args.report, scan.read_results(options.out), totals, source=args.input)
    if args.json:
        print(json.dumps(totals, ensure_ascii=False))
    else:
        print(summary.format_summary(totals))
        if "comparison" in totals:
            print(comparison.format_comparison(totals["comparison"]))
    if compared is not None:
        raise compared
    return 0


def _probe(args: argparse.Namespace) -> int:
    for made in probe.make_probes(_settings(args), args.n, args.prefix_chars, args.reference_chars, args.seed):
        print(json.dumps(made.to_dict(), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
