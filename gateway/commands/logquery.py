"""`egressgw log query|tail|har`: reading the flow log back, with filters.

Registered into the `log` command group (`gateway/commands/log.py`) by `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from gateway.log import reader
from gateway.logindex import QueryError
from gateway.logindex.har import build_har
from gateway.logindex.index import LogIndex, default_index_path, log_files, search
from gateway.logindex.output import FORMATS, write_all, writer_for
from gateway.logindex.query import DECISIONS, KINDS, Filter, event_time

FILTER_HELP = """filters (all given must match):
  --session S        a session id (repeat for several)
  --since/--until T  RFC3339 (2026-11-22T23:11:54Z), a date, `now`, or a time ago: 15m, 2h, 7d
                     (also --since=-15m; a bare `-15m` would look like an option)
  --host GLOB        destination host, SNI or DNS name; shell glob (*.example.com), case-insensitive
  --decision D       allow, deny or report
  --kind K           dns, tls, http, tcp, connect or session
  --rule R           the policy rule that decided
  --alerts           only events with an alert or detections
"""


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters")
    g.add_argument("--session", action="append", metavar="S", help="session id (repeatable)")
    g.add_argument("--since", metavar="T", help="from this time (RFC3339, date, now, or ago: 15m, 2h, 7d)")
    g.add_argument("--until", metavar="T", help="before this time")
    g.add_argument("--host", metavar="GLOB", help="host glob, e.g. '*.example.com' (case-insensitive)")
    g.add_argument("--decision", choices=DECISIONS)
    g.add_argument("--kind", choices=KINDS, help="event kind")
    g.add_argument("--rule", metavar="R", help="policy rule name")
    g.add_argument("--alerts", action="store_true", help="only events with an alert or detections")


def _add_index_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", metavar="PATH",
                   help="SQLite index file (default: .<first LOG>.idx.sqlite beside the log; "
                        "it is a cache: delete it at any time)")


def register(sub) -> None:
    """Add `query`, `tail` and `har` to the `log` command group's subparsers."""
    q = sub.add_parser("query", help="events from one or more flow logs, filtered (backed by an SQLite index)",
                       description="List flow-log events matching the filters, oldest first.",
                       epilog=FILTER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("logs", nargs="*", metavar="LOG",
                   help="log file, live log (with its rotated files) or directory (default: log.path of the config)")
    add_filter_arguments(q)
    q.add_argument("--limit", type=int, metavar="N", help="at most N events")
    q.add_argument("--newest-first", action="store_true", help="newest events first (with --limit: the last N)")
    q.add_argument("--format", choices=FORMATS, default="table")
    q.add_argument("--count", action="store_true", help="print only the number of matching events")
    _add_index_argument(q)
    q.add_argument("--no-index", action="store_true", help="scan the log instead of using an index")
    q.add_argument("--rebuild", action="store_true", help="drop the index and build it again from the log")
    q.set_defaults(func=query_command)

    t = sub.add_parser("tail", help="follow a live flow log (across rotation), filtered",
                       description="Print new flow-log events as they are written, following rotation.",
                       epilog=FILTER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("log", nargs="?", metavar="LOG", help="the live log file (default: log.path of the config)")
    add_filter_arguments(t)
    t.add_argument("--format", choices=FORMATS, default="table")
    t.add_argument("--from-start", action="store_true", help="start at the beginning of the live file, not its end")
    t.add_argument("--limit", type=int, metavar="N", help="stop after N matching events")
    t.set_defaults(func=tail_command)

    h = sub.add_parser("har", help="HAR 1.2 of one session's HTTP requests (no bodies or headers: not captured)")
    h.add_argument("logs", nargs="*", metavar="LOG", help="(default: log.path of the config)")
    h.add_argument("--session", required=True, metavar="S")
    h.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the HAR (- for stdout)")
    _add_index_argument(h)
    h.set_defaults(func=har_command)
    for p in (q, t, h):
        p.add_argument("--config", "-c", metavar="FILE",
                       help="gateway config whose log.path is the default LOG (default: $EGRESSGW_CONFIG, else "
                            "/etc/egressgw/config.yaml if it exists)")


def default_logs(args) -> list[str]:
    """The LOGs given, else the configured flow log (`--config`, $EGRESSGW_CONFIG, /etc/egressgw/config.yaml)."""
    logs = getattr(args, "logs", None) or ([args.log] if getattr(args, "log", None) else [])
    if logs:
        return [str(p) for p in logs]
    from gateway.commands.common import config_from_args  # only now: it imports the secrets backends

    return [config_from_args(args).log_path]


def open_index(index_arg: str | None, logs: list[str], rebuild: bool = False) -> LogIndex:
    """The index named, else beside the log, else (log directory not writable) in the user's cache."""
    path = Path(index_arg) if index_arg else default_index_path(logs)
    if not index_arg and not os.access(path.parent, os.W_OK) and not os.access(path, os.W_OK):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "egressgw"
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        fallback = cache / f"index-{key}.sqlite"
        print(f"egressgw: {path.parent} is not writable; index at {fallback}", file=sys.stderr)
        path = fallback
    if rebuild:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(str(path) + suffix)
            except FileNotFoundError:
                pass
    return LogIndex(path)


def indexed(index: LogIndex, files: list[Path], quiet: bool = False) -> None:
    stats = index.update(files)
    index.prune()
    if stats.added and not quiet:
        print(f"egressgw: indexed {stats.added} new records from {stats.files} file(s) in {stats.seconds:.1f}s",
              file=sys.stderr)


def query_command(args) -> int:
    flt = Filter.from_args(args)
    args.logs = default_logs(args)
    if args.limit is not None and args.limit < 0:
        raise QueryError("--limit must be 0 or more")
    files = log_files(args.logs)
    try:
        if args.no_index:
            hits = _scan(files, flt, args.limit, args.newest_first)
            if args.count:
                print(sum(1 for _ in hits))
                return 0
            write_all(args.format, sys.stdout, hits)
            return 0
        with open_index(args.index, args.logs, args.rebuild) as index:
            indexed(index, files)
            if args.count:
                n = index.count(flt, files)
                print(n if args.limit is None else min(n, args.limit))
                return 0
            write_all(args.format, sys.stdout,
                      (h.event for h in search(index, flt, files, args.limit, args.newest_first)))
    except BrokenPipeError:
        _quiet_stdout()
    return 0


def _scan(files, flt: Filter, limit: int | None, newest_first: bool):
    """The same query without an index: one pass over the log, sorted by time like the index does."""
    found = []
    for order, rec in enumerate(reader.iter_records(files)):
        ts = event_time(rec.event)
        if flt.match(rec.event, ts):
            found.append((ts if ts is not None else float("-inf"), order, rec.event))
    found.sort(key=lambda t: (t[0], t[1]), reverse=newest_first)
    if limit is not None:
        found = found[:limit]
    return (e for _, _, e in found)


def tail_command(args) -> int:
    flt = Filter.from_args(args)
    path = Path(default_logs(args)[0])
    if path.is_dir() or not (path.exists() or path.parent.is_dir()):
        raise QueryError(f"{path}: give the live log file (fix: e.g. /var/log/egressgw/flows.jsonl)")
    w = writer_for(args.format, sys.stdout)
    if hasattr(w, "sample"):
        w.sample = 0
    n = 0
    print(f"egressgw: following {path}{' from its start' if args.from_start else ''} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        for rec in reader.follow(path, from_start=args.from_start):
            if not flt.match(rec.event):
                continue
            w.write(rec.event)
            sys.stdout.flush()
            n += 1
            if args.limit is not None and n >= args.limit:
                break
    except BrokenPipeError:
        _quiet_stdout()
    return 0


def har_command(args) -> int:
    args.logs = default_logs(args)
    files = log_files(args.logs)
    flt = Filter(sessions=(args.session,), kind="http")
    with open_index(args.index, args.logs) as index:
        indexed(index, files)
        har = build_har(args.session, ((h.event, f"{h.path}:{h.line}") for h in search(index, flt, files)))
    if not har["log"]["entries"] and not index_has_session(args, files):
        raise QueryError(f"no events of session {args.session!r} in {', '.join(map(str, files))} "
                         "(fix: `egressgw log query LOG --kind session` lists the sessions)")
    text = json.dumps(har, indent=2, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"egressgw: {len(har['log']['entries'])} requests of session {args.session} in {args.output}",
              file=sys.stderr)
    return 0


def index_has_session(args, files) -> bool:
    with open_index(args.index, args.logs) as index:
        return index.count(Filter(sessions=(args.session,)), files) > 0


def _quiet_stdout() -> None:
    # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
