"""`egressgw review LOGS... -o report.html`: the report a reviewer opens first.

One streaming pass over the log builds every table and chart; `log verify`
runs at the same time in a second process (both read the whole log; on two
cores the report then costs about one pass).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gateway.errors import ConfigError
from gateway.log import chain, reader, verify
from gateway.logindex import QueryError
from gateway.logindex.index import log_files
from gateway.logindex.jsonline import loads
from gateway.logindex.query import Filter, parse_time
from gateway.review import integrity
from gateway.review.aggregate import Aggregator
from gateway.review.report import render


def add_parser(sub) -> None:
    p = sub.add_parser(
        "review", help="one self-contained HTML report of flow logs (per session and overall)",
        description="Read flow logs and write one HTML file a reviewer can open offline: what each sandbox "
                    "talked to, what was refused and why, alerts and placeholder misuse, credentials by host, "
                    "DNS anomalies, charts, and the verdict of `log verify` on the log's integrity.")
    p.add_argument("logs", nargs="*", metavar="LOG",
                   help="log file, live log (with its rotated files) or directory (default: log.path of the config)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    p.add_argument("--session", action="append", metavar="S", help="only these sessions (repeatable)")
    p.add_argument("--since", metavar="T", help="only events from this time (RFC3339, date, or -2h / -7d)")
    p.add_argument("--until", metavar="T", help="only events before this time")
    p.add_argument("--top", type=int, default=200, metavar="N", help="rows per detail table (default 200)")
    p.add_argument("--session-details", type=int, default=50, metavar="N",
                   help="sessions given their own section (default 50; the rest are in the sessions table)")
    p.add_argument("--title", help="page title")
    k = p.add_argument_group("integrity (as `egressgw log verify`)")
    k.add_argument("--key-file", metavar="FILE", help="the checkpoint key (default: log.hmacKeyFile of the config)")
    k.add_argument("--config", "-c", metavar="FILE", help="gateway config whose log.hmacKeyFile to use")
    k.add_argument("--no-key", action="store_true", help="check the hash chain only")
    k.add_argument("--no-verify", action="store_true", help="do not check integrity (the report says so)")
    p.set_defaults(func=review_command)


def _key(args) -> tuple[bytes | None, str | None]:
    """(key, why there is none). A key named explicitly must load; the config's default may be absent."""
    if args.no_key:
        return None, "--no-key"
    if args.key_file:
        return chain.load_key(args.key_file, create=False, source="--key-file"), None
    from gateway.commands.common import config_from_args

    explicit = bool(args.config or os.environ.get("EGRESSGW_CONFIG"))
    config = config_from_args(args)
    path = config.log_hmac_key_file
    if not explicit and not os.path.exists(path):
        return None, f"no key file at {path} (pass --key-file)"
    try:
        return chain.load_key(path, create=False, source=config.source), None
    except ConfigError as e:
        if explicit:
            raise
        return None, str(e)


def log_events(files: list[Path]):
    """Every event of the files in order: what `reader.iter_file` yields, parsed with the fast parser."""
    native = reader.native_event
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    continue  # a torn last line: `log verify` reports it
                try:
                    event = native(loads(line))
                except ValueError:
                    continue  # a corrupt line: `log verify` names it
                if event is not None:
                    yield event


PARALLEL_BYTES = 64 << 20  # below this, one process reads everything


def _aggregate(files: list[Path], flt: Filter) -> tuple[Aggregator, float]:
    c0 = time.process_time()
    agg = Aggregator()
    events = log_events(files)
    if flt.sessions or flt.since is not None or flt.until is not None:
        events = (e for e in events if flt.match(e))
    agg.add_all(events)
    return agg, time.process_time() - c0


def chunks(files: list[Path], n: int) -> list[list[Path]]:
    """`files` cut into up to n runs of consecutive files of about equal size (order kept)."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes) or 1
    out: list[list[Path]] = [[]]
    acc = 0
    for f, size in zip(files, sizes):
        if out[-1] and acc >= total * len(out) / n and len(out) < n:
            out.append([])
        out[-1].append(f)
        acc += size
    return out


def aggregate_files(files: list[Path], flt: Filter) -> tuple[Aggregator, float]:
    """One pass over the files; big logs are read by one process per CPU, each a run of files, then merged.

    Returns the aggregate and the CPU seconds of worker processes (0 when read here)."""
    n = min(os.cpu_count() or 1, len(files), 8)
    if n < 2 or sum(f.stat().st_size for f in files) < PARALLEL_BYTES:
        agg, _ = _aggregate(files, flt)
        return agg, 0.0
    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_aggregate, chunks(files, n), [flt] * n))
    except (OSError, ValueError):  # no worker processes here: read in this one
        agg, _ = _aggregate(files, flt)
        return agg, 0.0
    agg = parts[0][0]
    for later, _ in parts[1:]:
        agg.merge(later)
    return agg, sum(cpu for _, cpu in parts)


def _verify(files: list[str], key: bytes | None):
    """`log verify` (in the second process): its result and the CPU seconds it took."""
    c0 = time.process_time()
    result = verify.verify(files, key)
    return result, time.process_time() - c0


def review_command(args) -> int:
    t0 = time.monotonic()
    c0 = time.process_time()
    cpu_verify = 0.0
    if args.top < 1 or args.session_details < 0:
        raise QueryError("--top must be at least 1 and --session-details 0 or more")
    flt = Filter(sessions=tuple(args.session or ()),
                 since=parse_time(args.since) if args.since else None,
                 until=parse_time(args.until) if args.until else None)
    if not args.logs:
        from gateway.commands.common import config_from_args

        args.logs = [config_from_args(args).log_path]
    files = log_files(args.logs)
    out = Path(args.output)
    if out.resolve() in {f.resolve() for f in files}:
        raise QueryError(f"{out} is one of the logs (fix: write the report somewhere else)")
    for given in args.logs:
        if Path(given).is_dir() and out.resolve().parent == Path(given).resolve():
            # Next time the directory is read (review, query, `log verify`), the report would count as a log.
            raise QueryError(f"{out}: not inside the log directory {given} (fix: write the report somewhere else)")
    pool = None
    future = None
    if args.no_verify:
        verdict = integrity.Integrity("unverified", "not checked (--no-verify); run `egressgw log verify`")
    else:
        key, why = _key(args)
        try:
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
            future = pool.submit(_verify, [str(f) for f in files], key)
        except (OSError, ValueError):  # no second process: verify after the pass
            pool = None
    agg, cpu_workers = aggregate_files(files, flt)
    t_pass = time.monotonic() - t0
    if not args.no_verify:
        try:
            result, cpu_verify = future.result() if future is not None else _verify([str(f) for f in files], key)
            verdict = integrity.from_result(result, key is not None, why)
        except FileNotFoundError as e:
            verdict = integrity.Integrity("unverified", f"no such log file: {e}")
        except OSError as e:
            verdict = integrity.Integrity("unverified", f"cannot read {e.filename}: {e.strerror}")
        finally:
            if pool is not None:
                pool.shutdown()
    page = render(agg, [str(p) for p in args.logs], verdict, top=args.top, session_details=args.session_details,
                  title=args.title)
    data = page.encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    total = time.monotonic() - t0
    sessions = len(agg.sessions)
    cpu = time.process_time() - c0
    print(f"egressgw: {out}: {len(data) / 1e6:.2f} MB, {agg.records:,} events, {sessions:,} sessions; "
          f"{verdict.headline.lower()}; {total:.1f} s (read + aggregate {t_pass:.1f} s; CPU: report "
          f"{cpu + cpu_workers:.1f} s, verify {cpu_verify:.1f} s alongside)", file=sys.stderr)
    return 0 if verdict.status != "tampered" else 1
