"""``python -m gateway.lab up|down``: run a lab by hand (demo, debugging).

    python -m gateway.lab up [--prefix P] [--work DIR] [--nginx]
        builds the lab, prints its description (JSON), runs until Ctrl-C/SIGTERM
    python -m gateway.lab down PREFIX
        removes a crashed lab's namespaces (and kills what runs inside them)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .topology import Lab, cleanup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab and keep it running")
    up.add_argument("--prefix")
    up.add_argument("--work", help="work directory (kept afterwards)")
    up.add_argument("--nginx", action="store_true", help="also run nginx on 8080/8443")
    down = sub.add_parser("down", help="remove a lab's namespaces")
    down.add_argument("prefix")
    args = ap.parse_args(argv)

    if args.cmd == "down":
        removed = cleanup(args.prefix)
        print(" ".join(removed) if removed else f"no namespaces for {args.prefix}")
        return 0

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Lab(args.prefix, work=args.work, nginx=args.nginx, keep_work=bool(args.work)) as lab:
        print(json.dumps(lab.info(), indent=1), flush=True)
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
