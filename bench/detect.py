"""Detection benchmark: scan throughput (MB/s per core), false positives, misses, vs detect-secrets.

Builds a mixed clean corpus (default 64 MB: wheels, tarballs, minified JS, images, stdlib sources,
generated JSON API bodies, access logs, form posts; some gzip), a detector with the full built-in
rule pack and 1,000 known values, and a positive corpus (known values under every encoding and
container, one sample per rule). Times `Detector.scan` single-threaded with time.process_time,
then detect-secrets (default plugins, `scan_line` per line) on a text subset of the same corpus.
Prints a markdown table and writes bench/results/detect-latest.json (+ .md).

Usage: bash bench/run --only detect [--mb 64] [--ds-mb 4] [--values 1000] [--profile auto|always|never]
   or: PYTHONPATH=. python bench/detect.py ...
"""

from __future__ import annotations

import argparse
import base64
import collections
import gzip
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "detect"))

import corpus  # noqa: E402

from gateway.detect import DecodeLimit, Detector, KnownValue, builtin_rules  # noqa: E402

TARGET_MBPS = 300.0
TARGET_RATIO = 10.0


# Share of each payload kind in the clean corpus, by bytes: roughly what an agent sandbox sends out
# (API calls carrying JSON, package and artifact uploads, source pushes, logs and forms, web assets).
MIX = {"json": 0.30, "wheel": 0.12, "tarball": 0.08, "source": 0.15, "text": 0.12, "js": 0.08,
       "static": 0.04, "image": 0.04, "form": 0.07}


def build_clean(total_mb: float, seed: int = 1) -> list[corpus.Payload]:
    """Clean payloads until `total_mb` MB, each kind filled to its MIX share (repeats cycle)."""
    target = int(total_mb * 1e6)
    rnd = random.Random(seed)
    base = corpus.clean_corpus(seed)
    pools: dict[str, list[corpus.Payload]] = collections.defaultdict(list)
    for p in base:
        pools[p.kind].append(p)
    for pkg in ("mitmproxy", "hypothesis", "jinja2", "click", "dns", "h2"):
        pools["wheel"].append(corpus.Payload(f"wheel:{pkg}", "wheel", corpus.wheel(pkg), "application/zip"))
    for pkg in ("http", "xml", "asyncio", "unittest"):
        pools["tarball"].append(corpus.Payload(f"tarball:{pkg}", "tarball", corpus.tarball(pkg), "application/gzip"))
    pools["source"] = [corpus.Payload(f"py:{n}", "source", d, "text/x-python") for n, d in corpus.stdlib_sources(400)]
    generated = {
        "json": lambda i: (corpus.Payload(f"json:gen{i}:gzip", "json", gzip.compress(b, 6), "application/json", "gzip")
                           if i % 4 == 1 else corpus.Payload(f"json:gen{i}", "json", b, "application/json"))
        if (b := corpus.json_api_body(rnd, 60, escaped=(i % 5 == 0))) else None,
        "text": lambda i: corpus.Payload(f"log:gen{i}", "text", corpus.access_log(rnd, 600), "text/plain"),
        "form": lambda i: corpus.Payload(f"form:gen{i}", "form", corpus.form_post(rnd, 60), "application/x-www-form-urlencoded"),
    }
    out: list[corpus.Payload] = []
    for kind, share in MIX.items():
        want = int(target * share)
        got = 0
        i = 0
        while got < want:
            if kind in generated:
                p = generated[kind](i)
            else:
                pool = pools[kind]
                q = pool[i % len(pool)]
                p = q if i < len(pool) else corpus.Payload(f"{q.name}#{i}", q.kind, q.data, q.content_type, q.content_encoding)
            out.append(p)
            got += len(p.data)
            i += 1
    rnd.shuffle(out)
    return out


def known_values(n: int, seed: int = 3) -> list[KnownValue]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            v = base64.b64encode(rnd.randbytes(24))
        elif kind == 1:
            v = ("tok_" + "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(28))).encode()
        elif kind == 2:
            v = rnd.randbytes(16).hex().encode()
        else:
            v = ("Pw-" + "".join(rnd.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!@#%^&*") for _ in range(17))).encode()
        out.append(KnownValue(f"secret:v{i}", v))
    return out


def build_positives(values: list[KnownValue], per_value: int = 1, seed: int = 5) -> list[tuple[str, str | None, corpus.Payload]]:
    """(expected rule, expected label, payload): known values spread over every encoding x container,
    plus every rule sample in plain / gzip / base64 / multipart."""
    rnd = random.Random(seed)
    encs = list(corpus.ENCODINGS.items())
    conts = list(corpus.CONTAINERS.items())
    out = []
    n = 0
    for kv in values:
        for _ in range(per_value):
            ename, (fn, _exp) = encs[n % len(encs)]
            cname, cfn = conts[(n // len(encs) + n) % len(conts)]
            n += 1
            if not corpus.applicable(kv.value, ename, cname):
                cname, cfn = "plain", corpus.CONTAINERS["plain"]
            data, ct, ce, _part, pname = cfn(fn(kv.value))  # type: ignore[operator]
            out.append((("known-value"), kv.label, corpus.Payload(f"{kv.label}/{ename}/{cname}", "positive", data, ct, ce, pname)))
    for rid, sample in corpus.rule_samples().items():
        wrapped = b"config:\n" + sample + b"\n# end\n"
        for cname in ("plain", "gzip", "multipart", "multipart-b64"):
            data, ct, ce, _part, pname = corpus.CONTAINERS[cname](wrapped)  # type: ignore[operator]
            out.append((rid, None, corpus.Payload(f"{rid}/{cname}", "positive", data, ct, ce, pname)))
        blob = b"data=" + base64.b64encode(wrapped * 2)
        out.append((rid, None, corpus.Payload(f"{rid}/base64", "positive", blob, None, None, "body")))
    rnd.shuffle(out)
    return out


def scan_all(det: Detector, payloads: list[corpus.Payload]) -> tuple[float, list[tuple[corpus.Payload, list]], int]:
    results = []
    limits = 0
    t0 = time.process_time()
    for p in payloads:
        try:
            hits = det.scan(p.data, p.part, content_type=p.content_type, content_encoding=p.content_encoding)
        except DecodeLimit as e:
            hits = e.hits
            limits += 1
        results.append((p, hits))
    return time.process_time() - t0, results, limits


def text_subset(payloads: list[corpus.Payload], mb: float) -> list[str]:
    """Lines of the text payloads (decompressed), about `mb` MB, for detect-secrets."""
    lines: list[str] = []
    size = 0
    target = mb * 1e6
    kinds = collections.defaultdict(list)
    for p in payloads:
        kinds[p.kind].append(p)
    order = []
    for group in zip(*[kinds[k] for k in ("json", "source", "text", "form", "js")]):
        order.extend(group)
    for p in order:
        data = gzip.decompress(p.data) if p.content_encoding == "gzip" else p.data
        for line in data.decode("utf-8", "replace").splitlines():
            lines.append(line)
            size += len(line) + 1
        if size >= target:
            break
    return lines


def detect_secrets_run(lines: list[str]) -> tuple[float, int, int]:
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    found = 0
    size = sum(len(x.encode()) + 1 for x in lines)
    with default_settings():
        t0 = time.process_time()
        for line in lines:
            for _s in scan_line(line):
                found += 1
        dt = time.process_time() - t0
    return dt, size, found


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/detect.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=64.0, help="clean corpus size in MB (default 64)")
    ap.add_argument("--ds-mb", type=float, default=4.0, help="text subset for detect-secrets in MB (default 4)")
    ap.add_argument("--values", type=int, default=1000, help="known values (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes over the clean corpus; best is kept (default 3)")
    ap.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                    help="py-spy a scan pass and print the top frames: auto = only if the MB/s target is missed")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    ap.add_argument("--pure-python", action="store_true",
                    help="measure without gateway/detect/_unescape.c, as a gateway built without a C compiler runs")
    a = ap.parse_args()
    if a.pure_python:
        from gateway.detect import decode

        decode._native = None  # detectors built from now on use the Python views and shapes

    t0 = time.time()
    load_before = os.getloadavg()
    clean = build_clean(a.mb)
    clean_bytes = sum(len(p.data) for p in clean)
    values = known_values(a.values)
    tc = time.process_time()
    det = Detector(builtin_rules(), values)
    compile_s = time.process_time() - tc
    positives = build_positives(values)
    print(f"corpus: {len(clean)} payloads, {clean_bytes / 1e6:.1f} MB clean, {len(positives)} positives "
          f"(built in {time.time() - t0:.1f}s); detector compiled in {compile_s:.2f}s "
          f"({det.stats['value_patterns']} literal forms, {len(det.rules.rules)} rules)", file=sys.stderr)

    scan_all(det, clean[:20])  # warm up
    best = None
    for _ in range(a.rounds):
        dt, results, limits = scan_all(det, clean)
        if best is None or dt < best[0]:
            best = (dt, results, limits)
    assert best is not None
    dt, results, limits = best
    mbps = clean_bytes / dt / 1e6
    # bytes the engine actually looked at: gzip bodies and tar.gz count decompressed
    inspected = sum(len(gzip.decompress(p.data)) if p.data[:2] == b"\x1f\x8b" else len(p.data) for p in clean)

    fp_by_rule: collections.Counter[str] = collections.Counter()
    fp_by_kind: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = {}
    for p, hits in results:
        for h in hits:
            fp_by_rule[h.rule] += 1
            fp_by_kind[p.kind] += 1
            examples.setdefault(h.rule, []).append(f"{p.name}: {h.context}")
    kind_bytes: collections.Counter[str] = collections.Counter()
    for p in clean:
        kind_bytes[p.kind] += len(p.data)

    pdt, presults, _pl = scan_all(det, [p for _r, _l, p in positives])
    misses = []
    for (rule, label, p), (_p, hits) in zip(positives, presults):
        if not any(h.rule == rule and (label is None or h.label == label) for h in hits):
            misses.append(p.name)

    lines = text_subset(clean, a.ds_mb)
    ds_dt, ds_bytes, ds_found = detect_secrets_run(lines)
    ds_mbps = ds_bytes / ds_dt / 1e6
    # our engine on exactly the same text, for an apples-to-apples ratio
    same = "\n".join(lines).encode()
    t1 = time.process_time()
    same_hits = 0
    for i in range(0, len(same), 1 << 20):
        same_hits += len(det.scan(same[i : i + (1 << 20)], "body"))
    ours_same = len(same) / (time.process_time() - t1) / 1e6

    rows = [
        ("clean corpus", f"{clean_bytes / 1e6:.1f} MB, {len(clean)} payloads"),
        ("known values / literal forms / rules", f"{a.values} / {det.stats['value_patterns']} / {len(det.rules.rules)}"),
        ("egressgw scan, MB/s per core", f"{mbps:.0f} (target >= {TARGET_MBPS:.0f})"),
        ("escape views and percent shapes", "C (gateway/detect/_unescape.c)" if det.stats["c_views"]
         else "pure Python (_unescape.c not built)"),
        ("egressgw, inspected (decompressed) MB/s per core", f"{inspected / dt / 1e6:.0f} ({inspected / 1e6:.1f} MB after decompression)"),
        ("egressgw on the detect-secrets text subset, MB/s", f"{ours_same:.0f}"),
        ("detect-secrets (default plugins, scan_line), MB/s", f"{ds_mbps:.2f} on {ds_bytes / 1e6:.1f} MB of text"),
        ("speed-up vs detect-secrets (same text)", f"{ours_same / ds_mbps:.0f}x (target >= {TARGET_RATIO:.0f}x)"),
        ("positives caught", f"{len(positives) - len(misses)} / {len(positives)} (misses: {len(misses)}, target 0)"),
        ("false positives on the clean corpus", f"{sum(fp_by_rule.values())} ({sum(fp_by_rule.values()) / (clean_bytes / 1e6):.3f} per MB)"),
        ("known-value false positives", f"{fp_by_rule.get('known-value', 0)}"),
        ("detect-secrets findings on its text subset", f"{ds_found}"),
        ("decode limits hit (clean)", f"{limits}"),
        ("detector compile time", f"{compile_s:.2f} s"),
        ("load average before / after (cores: %d)" % os.cpu_count(), f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}"),
    ]
    md = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    md += ["", "| rule | false positives | example context |", "|---|---|---|"]
    for rule, n in fp_by_rule.most_common():
        md.append(f"| {rule} | {n} | `{examples[rule][0][:90]}` |")
    if not fp_by_rule:
        md.append("| (none) | 0 | |")
    md += ["", "| payload kind | MB | hits |", "|---|---|---|"]
    for kind, b in kind_bytes.most_common():
        md.append(f"| {kind} | {b / 1e6:.1f} | {fp_by_kind.get(kind, 0)} |")
    text = "\n".join(md)
    print(text)
    if misses:
        print("\nmisses:\n" + "\n".join(misses[:50]))

    ok = mbps >= TARGET_MBPS and ours_same / ds_mbps >= TARGET_RATIO and not misses
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:],
        "clean_bytes": clean_bytes,
        "payloads": len(clean),
        "values": a.values,
        "literal_forms": det.stats["value_patterns"],
        "c_views": det.stats["c_views"],
        "rules": len(det.rules.rules),
        "scan_seconds": dt,
        "mb_per_s": mbps,
        "inspected_bytes": inspected,
        "inspected_mb_per_s": inspected / dt / 1e6,
        "mb_per_s_same_text": ours_same,
        "detect_secrets_mb_per_s": ds_mbps,
        "detect_secrets_bytes": ds_bytes,
        "detect_secrets_findings": ds_found,
        "speedup": ours_same / ds_mbps,
        "positives": len(positives),
        "misses": misses,
        "false_positives": dict(fp_by_rule),
        "false_positive_examples": {k: v[:5] for k, v in examples.items()},
        "decode_limits": limits,
        "compile_seconds": compile_s,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "targets_met": ok,
    }
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "detect-latest.json").write_text(json.dumps(out, indent=1))
    (outdir / "detect-latest.md").write_text(text + "\n")
    print(f"\nwrote {outdir / 'detect-latest.json'}", file=sys.stderr)

    if a.profile == "always" or (a.profile == "auto" and mbps < TARGET_MBPS):
        profile(a)
    return 0 if ok else 1


def profile(a: argparse.Namespace) -> None:
    """py-spy the scan loop (top frames) so a missed target says where the time goes."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        print("profile: py-spy not installed next to this Python (pip install py-spy)", file=sys.stderr)
        return
    out = Path(a.out) / "detect-profile.txt"
    cmd = [str(pyspy), "record", "--format", "raw", "--rate", "200", "-o", str(out), "--",
           sys.executable, __file__, "--mb", str(min(a.mb, 16)), "--rounds", "1", "--ds-mb", "0.2", "--profile", "never", "--out", a.out + "/.profile"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode not in (0, 1) or not out.exists():
        print(f"profile: py-spy failed: {r.stderr[-500:]}", file=sys.stderr)
        return
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "scan_all" not in stack:
            continue
        total += int(n)
        own[stack.split(";")[-1]] += int(n)
    print(f"\nprofile ({out}): self time of the scan loop's leaf frames", file=sys.stderr)
    for frame, n in own.most_common(12):
        print(f"  {100 * n / max(total, 1):5.1f}%  {frame}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
