"""Worker processes: with `workers: N` (N > 1) one supervisor and N full gateways.

    supervisor (the `egressgw run` process)     control API, metrics (every worker's, merged), SIGHUP,
                                                the session store's writer; starts and restarts workers
    worker k (0..N-1)                           mitmproxy + our addons on listen.transparent + k,
                                                listen.dns + k, listen.proxy + k; flow log <stem>-wK<suffix>;
                                                status (ready, metrics) on <stateDir>/workers/wK.sock

A session is pinned to one worker when it is created (least sessions among the workers up; the
record keeps `worker`, so a restart keeps it): `sandbox up` asks GET /v1/workers for the pick and
points the sandbox's nftables redirect at that worker's ports. A worker holds only the sessions
pinned to it and follows the store (SQLite: PRAGMA data_version polling; Redis: pub/sub).

A worker that dies is restarted (backoff 0.2 s doubling to 5 s while it keeps dying young).
Meanwhile its ports are closed: its sandboxes' connections are refused (fail closed) and the
other workers' sandboxes carry on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.config import Config, Listen
from gateway.metrics import WORKER_RESTARTS, WORKERS, WORKERS_UP

logger = logging.getLogger("egressgw")

RESTART_MIN, RESTART_MAX = 0.2, 5.0  # seconds before restarting a dead worker (doubling while it dies young)
YOUNG = 10.0  # a worker that dies sooner than this after its start counts as crash-looping
STATUS_TIMEOUT = 1.0
READY_POLL = 0.25  # seconds between asking each worker whether its listeners are up


def _shift(listen: Listen | None, k: int) -> Listen | None:
    return None if listen is None else Listen(listen.host, listen.port + k)


def worker_log_path(log_path: str, k: int) -> str:
    """flows.jsonl -> flows-w1.jsonl: one writer per file, one chain per worker (reader.expand finds them)."""
    p = Path(log_path)
    return str(p.with_name(f"{p.stem}-w{k}{p.suffix}"))


def worker_socket(config: Config, k: int) -> str:
    return str(Path(config.state_dir) / "workers" / f"w{k}.sock")


def worker_config(config: Config, k: int) -> Config:
    """Worker k's own view: its listen ports, its flow log; no control API, no metrics port (the supervisor's)."""
    return dataclasses.replace(
        config, transparent=_shift(config.transparent, k), dns=_shift(config.dns, k), proxy=_shift(config.proxy, k),
        log_path=worker_log_path(config.log_path, k), metrics=None)


async def http_get_unix(path: str, target: str, timeout: float = STATUS_TIMEOUT) -> tuple[int, bytes]:
    """GET over a unix socket (HTTP/1.0): (status, body). OSError/TimeoutError when the worker is not there."""
    async def get() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"worker status {path}: not an HTTP answer") from None
        return status, body

    return await asyncio.wait_for(get(), timeout)


@dataclasses.dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    ready: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Pool:
    """The supervisor's workers: start, restart, readiness, where a new session goes, merged metrics."""

    def __init__(self, config: Config):
        self.config = config
        self.workers = [Worker(k) for k in range(config.workers)]
        self._stopping = False
        for m in (WORKERS, WORKERS_UP, WORKER_RESTARTS):
            metrics.REGISTRY.register(m)
        WORKERS.set(len(self.workers))

    def __len__(self) -> int:
        return len(self.workers)

    def __bool__(self) -> bool:
        return True

    # -- what the control API asks ---------------------------------------------------------------
    def ports(self, k: int) -> dict:
        c = worker_config(self.config, k)
        return {"transparent": c.transparent.port, "dns": c.dns.port, "proxy": str(c.proxy) if c.proxy else None}

    def proxy_for(self, k: int) -> str | None:
        return self.ports(k)["proxy"]

    def _counts(self, registry) -> list[int]:
        counts = [0] * len(self.workers)
        for s in registry.list():
            if isinstance(s.worker, int) and 0 <= s.worker < len(counts):
                counts[s.worker] += 1
        return counts

    def pick(self, registry) -> int:
        """Least sessions among the workers up (all of them when none is up); ties: the lowest index."""
        counts = self._counts(registry)
        up = [w.index for w in self.workers if w.ready] or [w.index for w in self.workers]
        return min(up, key=lambda k: (counts[k], k))

    def describe(self, registry) -> list[dict]:
        counts = self._counts(registry)
        return [{"index": w.index, **self.ports(w.index), "sessions": counts[w.index], "up": w.ready,
                 "pid": w.proc.pid if w.running else None, "restarts": w.restarts} for w in self.workers]

    def ready(self) -> bool:
        return all(w.ready for w in self.workers)

    # -- processes -----------------------------------------------------------------------------
    def _argv(self, k: int) -> list[str]:
        return [sys.executable, "-m", "gateway", "run", "--config", self.config.source, "--worker", str(k)]

    async def _keep(self, w: Worker) -> None:
        """Run worker w forever: start it, wait for it, restart it when it dies."""
        backoff = RESTART_MIN
        while not self._stopping:
            w.proc = await asyncio.create_subprocess_exec(*self._argv(w.index), stdin=asyncio.subprocess.DEVNULL)
            w.started = time.monotonic()
            logger.warning("worker %d started (pid %d)", w.index, w.proc.pid)
            code = await w.proc.wait()
            w.ready = False
            self._update_gauge()
            if self._stopping:
                return
            w.restarts += 1
            WORKER_RESTARTS.inc()
            lived = time.monotonic() - w.started
            backoff = min(backoff * 2, RESTART_MAX) if lived < YOUNG else RESTART_MIN
            logger.error("worker %d (pid %d) exited with %s after %.1fs; its sandboxes have no egress until it is back; "
                         "restarting in %.1fs", w.index, w.proc.pid, code, lived, backoff)
            await asyncio.sleep(backoff)

    async def _watch_ready(self) -> None:
        while not self._stopping:
            for w in self.workers:
                ready = False
                if w.running:
                    try:
                        status, _ = await http_get_unix(worker_socket(self.config, w.index), "/ready")
                        ready = status == 200
                    except (OSError, asyncio.TimeoutError):
                        ready = False
                if ready != w.ready:
                    w.ready = ready
                    if ready:
                        logger.warning("worker %d ready", w.index)
            self._update_gauge()
            await asyncio.sleep(READY_POLL)

    def _update_gauge(self) -> None:
        WORKERS_UP.set(sum(w.ready for w in self.workers))

    async def run(self) -> None:
        Path(worker_socket(self.config, 0)).parent.mkdir(parents=True, exist_ok=True)
        tasks = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
        tasks.append(asyncio.ensure_future(self._watch_ready()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after 10 s."""
        self._stopping = True
        procs = [w.proc for w in self.workers if w.running]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 10)
        except asyncio.TimeoutError:
            for p in procs:
                if p.returncode is None:
                    p.kill()

    # -- metrics ---------------------------------------------------------------------------------
    async def exposition(self) -> bytes:
        """Every worker's metrics and the supervisor's, merged: counters and histograms summed, sessions summed,
        session_store_up the minimum (0 when any worker cannot vouch for its sessions). A dead worker's counts
        are missing until it is back (its counters restart at 0: Prometheus treats that as a counter reset)."""
        texts = [generate_latest(metrics.REGISTRY).decode()]
        for w in self.workers:
            if not w.running:
                continue
            try:
                status, body = await http_get_unix(worker_socket(self.config, w.index), "/metrics")
            except (OSError, asyncio.TimeoutError):
                continue
            if status == 200:
                texts.append(body.decode())
        return merge_expositions(texts)


_SUPERVISOR_ONLY = {"egressgw_workers", "egressgw_workers_up", "egressgw_worker_restarts"}
_MINIMUM = {"egressgw_session_store_up"}


def merge_expositions(texts: list[str]) -> bytes:
    """Merge Prometheus text expositions; texts[0] is the supervisor's own (its session gauge is not a worker's)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for i, text in enumerate(texts):
        for fam in text_string_to_metric_families(text):
            if i > 0 and fam.name in _SUPERVISOR_ONLY:
                continue
            if i == 0 and fam.name == "egressgw_active_sessions":
                continue  # the workers' gauges count the sessions each serves; their sum is the total
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            acc = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if fam.name in _MINIMUM:
                    acc[key] = min(acc.get(key, s.value), s.value)
                else:
                    acc[key] = acc.get(key, 0.0) + s.value
    registry = CollectorRegistry(auto_describe=False)

    class _Merged:
        def collect(self):
            for name, fam in families.items():
                fam.samples = []
                for (sample, labels), value in values[name].items():
                    fam.add_sample(sample, dict(labels), value)
                yield fam

    registry.register(_Merged())
    return generate_latest(registry)


def status_app(ready):
    """A worker's status endpoints on its unix socket: /ready (200 when its listeners are up) and /metrics."""
    import tornado.web

    class Ready(tornado.web.RequestHandler):
        def get(self) -> None:
            ok = ready()
            self.set_status(200 if ok else 503)
            self.finish({"ready": ok})

    class Metrics(tornado.web.RequestHandler):
        def get(self) -> None:
            self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.finish(metrics.exposition())

    return tornado.web.Application([(r"/ready", Ready), (r"/metrics", Metrics)], log_function=lambda handler: None)

