"""Run the fuzz harnesses: `python -m fuzz {dns,policy,all} --seconds N [--corpus DIR] [--replay FILE]`.

With atheris installed (Linux wheels on PyPI) each harness runs under libFuzzer, coverage-guided, in its
own process (libFuzzer exits when done). Without it, a plain mutation loop over the seeds runs instead
(weaker: no coverage feedback) and says so. Exit status 0: no finding; 1: a finding, its input saved."""

from __future__ import annotations

import argparse
import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESSES = ("dns", "policy")
ARTIFACTS = ROOT / "fuzz" / "artifacts"


def _target(name: str):
    return importlib.import_module(f"fuzz.{name}")


def _child(name: str, seconds: int, corpus: Path) -> None:
    """Runs inside the libFuzzer process."""
    import atheris

    with atheris.instrument_imports(include=["gateway", "mitmproxy.dns", "mitmproxy.net.dns", "yaml"]):
        module = _target(name)
        target = module.Target()
    ARTIFACTS.mkdir(exist_ok=True)
    args = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", f"-artifact_prefix={ARTIFACTS}/{name}-",
            "-max_len=4096", "-rss_limit_mb=2048", "-print_final_stats=1"]
    if os.environ.get("EGRESSGW_FUZZ_SEED"):  # CI: a fixed seed, so a red run is reproducible, not luck
        args.append(f"-seed={int(os.environ['EGRESSGW_FUZZ_SEED'])}")
    atheris.Setup(args, target)
    atheris.Fuzz()


def _mutate(rnd: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op = rnd.randrange(5)
        pos = rnd.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rnd.randrange(256)]) * rnd.randint(1, 4)
        elif op == 2:
            del buf[pos:pos + rnd.randint(1, 8)]
        elif op == 3:
            other = rnd.choice(pool)
            start = rnd.randrange(len(other) + 1)
            buf[pos:pos] = other[start:start + rnd.randint(1, 32)]
        elif buf:
            buf[min(pos, len(buf) - 1)] = rnd.choice((0, 0xFF, 0x7F, 0x80, 0x3F, 0xC0, ord("."), ord(":")))
    return bytes(buf[:4096])


def _loop(name: str, seconds: int) -> int:
    module = _target(name)
    target = module.Target()
    pool = module.seeds()
    rnd = random.Random(int(os.environ.get("EGRESSGW_FUZZ_SEED", time.time_ns())))
    end, runs = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        data = _mutate(rnd, rnd.choice(pool), pool)
        try:
            target(data)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            path = ARTIFACTS / f"{name}-crash-{runs}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"fuzz {name}: finding after {runs} runs; input saved to {path}", file=sys.stderr)
            return 1
        runs += 1
        if runs % 50 == 0 and len(pool) < 2000:
            pool.append(data)
    print(f"fuzz {name}: {runs} runs in {seconds}s, no finding (mutation loop, atheris not installed)")
    return 0


def _run(name: str, seconds: int, corpus: str | None) -> int:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return _loop(name, seconds)
    work = Path(corpus) if corpus else Path(tempfile.mkdtemp(prefix=f"egressgw-fuzz-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(_target(name).seeds()):
        (work / f"seed-{i}").write_bytes(seed)
    cmd = [sys.executable, "-m", "fuzz", name, "--seconds", str(seconds), "--child", str(work)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, errors="replace")
    stats = [line for line in proc.stderr.splitlines() if line.startswith(("stat::", "Done", "#"))]
    runs = next((line.split()[-1] for line in stats if line.startswith("stat::number_of_executed_units")), "?")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        print(f"fuzz {name}: FINDING (exit {proc.returncode}); input in {ARTIFACTS}/", file=sys.stderr)
        return 1
    kept = f"; corpus kept in {work}" if corpus else ""
    if not corpus:
        shutil.rmtree(work, ignore_errors=True)
    print(f"fuzz {name}: {runs} runs in {time.monotonic() - started:.0f}s (atheris), no finding{kept}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("harness", choices=(*HARNESSES, "all"))
    ap.add_argument("--seconds", type=int, default=60, help="how long each harness runs (default 60)")
    ap.add_argument("--corpus", help="keep the corpus in this directory (default: a fresh temporary one)")
    ap.add_argument("--replay", help="run one saved input through the harness and show what it raises")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--loop", action="store_true", help="use the plain mutation loop even if atheris is installed")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.harness, args.seconds, Path(args.child))
        return 0
    if args.replay:
        _target(args.harness).Target()(Path(args.replay).read_bytes())
        print("no finding")
        return 0
    names = HARNESSES if args.harness == "all" else (args.harness,)
    status = 0
    for name in names:
        status |= _loop(name, args.seconds) if args.loop else _run(name, args.seconds, args.corpus)
    return status


if __name__ == "__main__":
    sys.exit(main())
