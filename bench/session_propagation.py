"""How long a session change made on one replica takes to be enforced by another (Redis store).

    PYTHONPATH=$PWD python bench/session_propagation.py [--rounds 200]

Starts a throwaway redis-server (gateway.lab.redis), two registries with their watchers in one
event loop (as two gateway processes would run them), and times create / policy replace / delete
on A until B sees it. Prints min, median, p99 and max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.lab.redis import RedisServer  # noqa: E402
from gateway.policy import load_policy_text  # noqa: E402
from gateway.sessions.redisstore import RedisStore  # noqa: E402
from gateway.sessions.registry import SessionRegistry  # noqa: E402

POLICY = ("apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n"
          "  egress:\n    - hosts: [{{matchName: {name}.test}}]\n")


async def main(rounds: int, url: str) -> dict[str, list[float]]:
    a, b = SessionRegistry(RedisStore(url)), SessionRegistry(RedisStore(url))
    tasks = [asyncio.ensure_future(r.store.watch(r.apply, r.ids)) for r in (a, b)]
    while not (a.store.healthy() and b.store.healthy()):
        await asyncio.sleep(0.01)
    times: dict[str, list[float]] = {"create": [], "replace": [], "delete": []}

    async def until(check) -> float:
        start = time.perf_counter()
        while not check():
            await asyncio.sleep(0.0005)
        return (time.perf_counter() - start) * 1000

    texts = [POLICY.format(name=n) for n in ("one", "two")]
    policies = [load_policy_text(t) for t in texts]
    for i in range(rounds):
        s = a.create(f"s{i}", policies[0], policy_text=texts[0])
        times["create"].append(await until(lambda: s.id in b.ids()))
        a.replace_policy(s.id, policies[1], policy_text=texts[1])
        times["replace"].append(await until(lambda: b.get(s.id).policy.name == "two"))
        a.delete(s.id)
        times["delete"].append(await until(lambda: s.id not in b.ids()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return times


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d, RedisServer(d, port) as server:
        result = asyncio.run(main(args.rounds, server.url))
    for op, ms in result.items():
        ms.sort()
        print(f"{op:8} n={len(ms)} min {ms[0]:.2f} ms  median {statistics.median(ms):.2f} ms  "
              f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms  max {ms[-1]:.2f} ms")
