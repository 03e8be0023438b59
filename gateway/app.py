"""Builds the gateway: mitmproxy embedded as a library, our addons, the control API and metrics.

One process, one event loop. mitmproxy supplies the listeners (transparent,
explicit proxy, DNS), TLS and HTTP; `gateway.addons.default_addons()` makes
every decision. Only the mitmproxy addons the gateway needs are loaded: in
particular mitmproxy's own DNS resolver is not, so no name is looked up
unless our DNS step allowed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web
from mitmproxy import options
from mitmproxy.addons import (
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    strip_dns_https_records,
)
from mitmproxy.master import Master

from gateway import ca, gctune, h2repr, metrics, workers
from gateway.addons import default_addons
from gateway.audit import Audit
from gateway.config import Config, Listen
from gateway.connstate import ConnTable
from gateway.detect.dnstunnel import DnsTunnelDetector, Settings
from gateway.dialguard import DialGuard
from gateway.resolver import UpstreamResolver
from gateway.secrets.backends import SecretStore
from gateway.sessions.api import ControlAPI
from gateway.sessions.registry import SessionRegistry
from gateway.sessions.store import SessionStoreUnavailable, open_store
from gateway.trust import sandbox_bundle_path, write_sandbox_bundle

logger = logging.getLogger("egressgw")


def mode_specs(config: Config) -> list[str]:
    modes = [f"transparent@{config.transparent}", f"dns@{config.dns}"]
    if config.proxy:
        modes.append(f"regular@{config.proxy}")
    return modes


class _Metrics(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.exposition())


class Gateway:
    """Everything one gateway process owns. `worker`: worker k of a supervisor (gateway/workers.py)."""

    def __init__(self, config: Config, worker: int | None = None):
        self.worker = worker
        if worker is not None:
            config = workers.worker_config(config, worker)
        self.config = config
        self.registry = SessionRegistry(open_store(config.session_store, follow=worker is not None), worker=worker)
        metrics.SESSION_STORE_UP.set(1 if self.registry.store.healthy() else 0)  # a shared store: 0 until synced
        self.audit = Audit.from_config(config)
        if worker is None:
            self.registry.subscribe(lambda what, s: self.audit.session_changed(what, s, len(self.registry)))
        else:  # the supervisor logs session changes; a worker counts the sessions it serves
            self.registry.subscribe(lambda what, s: metrics.ACTIVE_SESSIONS.set(len(self.registry)))
        self.resolver = UpstreamResolver(config.upstream_dns, config.upstream_timeout)
        self.guard = DialGuard(self.resolver, config.allow_dest_ranges)
        self.conns = ConnTable()
        self.store = SecretStore(ttl=config.secret_ttl)
        self.master: Master | None = None
        self._http_servers: list[tornado.httpserver.HTTPServer] = []

    def ready(self) -> bool:
        if self.master is None:
            return False
        ps = self.master.addons.get("proxyserver")
        return bool(ps and ps.servers and all(s.is_running for s in ps.servers))

    def _build_master(self) -> Master:
        Path(self.config.ca_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.ca_dir, 0o755)  # sandboxes read the bundle; key files stay 0600
        ca.ensure(self.config.ca_dir, self.config.ca_name_constraints, self.config.source)  # before mitmproxy loads it
        h2repr.install()  # h2 formats every frame it receives: not a copy of each payload (gateway/h2repr.py)
        master = Master(options.Options(), event_loop=asyncio.get_running_loop(), with_termlog=True)
        master.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            ca.TlsConfig(leaf_key=self.config.ca_leaf_key, sni_only=bool(self.config.ca_name_constraints)),
            disable_h2c.DisableH2C(),
            strip_dns_https_records.StripDnsHttpsRecords(),
            errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        )
        master.addons.add(*default_addons(
            registry=self.registry, conns=self.conns, resolver=self.resolver, guard=self.guard, audit=self.audit,
            store=self.store, dns_tunnels=DnsTunnelDetector(self.config.dns_detection or Settings()),
            timeouts={"headers": self.config.request_headers_timeout, "body": self.config.request_body_timeout,
                      "origin": self.config.response_headers_timeout},
            reuse_idle_seconds=self.config.upstream_reuse_idle))
        master.addons.add(gctune.Freeze())  # last: once everything above is loaded (gateway/gctune.py)
        master.options.update(
            mode=mode_specs(self.config),
            confdir=self.config.ca_dir,
            connection_strategy="lazy",  # decide before dialling: nothing upstream until a request is allowed
            upstream_cert=False,  # never connect upstream just to copy a certificate
            ssl_verify_upstream_trusted_ca=self.config.upstream_ca_bundle,
            http2=True,
            rawtcp=True,
            tcp_timeout=max(1, round(self.config.idle_timeout)),  # timeouts.idleSeconds
            termlog_verbosity="warn",
        )
        return master

    def _serve_http(self, app: tornado.web.Application, listen: Listen | None, unix: str | None = None) -> None:
        server = tornado.httpserver.HTTPServer(app, max_body_size=2 << 20)
        if unix:
            Path(unix).parent.mkdir(parents=True, exist_ok=True)
            server.add_socket(tornado.netutil.bind_unix_socket(unix, mode=0o600))
        else:
            server.listen(listen.port, listen.host)
        self._http_servers.append(server)

    def reload(self) -> None:
        """SIGHUP: re-read the policy file of every session created from one (`sandbox up --policy FILE`).

        A changed file replaces that session's policy (the next request, DNS query or connection is decided
        by it; established connections the new policy still allows carry on). A file that no longer loads
        leaves the old policy, logged. Listeners, CA, log path and store are not re-read: restart for those."""
        try:
            reloaded, failed = self.registry.reload_files()
        except Exception:  # never let a reload take the gateway down; the old policies stay
            logger.exception("SIGHUP: reload failed; every session keeps its policy")
            return
        logger.warning("SIGHUP: %d session policies reloaded, %d kept (file did not load)", len(reloaded), len(failed))

    async def run(self) -> None:
        self.master = self._build_master()
        for key in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
            path = Path(self.config.ca_dir, key)
            if path.exists():
                os.chmod(path, 0o600)
        # a worker's supervisor wrote the bundle (N workers writing it at once would race)
        bundle = write_sandbox_bundle(self.config) if self.worker is None else sandbox_bundle_path(self.config)
        try:
            loaded = self.registry.load()
        except SessionStoreUnavailable as e:  # a shared store: its watcher keeps trying; until then, refuse
            logger.error("%s", e)
            loaded = 0
        watch = getattr(self.registry.store, "watch", None)
        watcher = asyncio.ensure_future(watch(self.registry.apply, self.registry.ids)) if watch else None
        proxy = str(self.config.proxy) if self.config.proxy else None
        if self.worker is None:
            control = ControlAPI(self.registry, self.config.control_token(), self.ready, proxy, self.store, bundle)
            self._serve_http(control.application(), self.config.control.tcp, self.config.control.unix)
        else:  # the supervisor serves the control API; it asks a worker's socket for readiness and metrics
            self._serve_http(workers.status_app(self.ready), None, workers.worker_socket(self.config, self.worker))
        if self.config.metrics:
            self._serve_http(tornado.web.Application([(r"/metrics", _Metrics)], log_function=lambda handler: None), self.config.metrics)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.master.shutdown)
        # A worker leaves SIGHUP to the supervisor (it re-reads policy files; the store carries the change here).
        loop.add_signal_handler(signal.SIGHUP, self.reload if self.worker is None else (lambda: None))
        logger.warning(
            "egressgw up: transparent %s, dns %s, proxy %s, control %s, metrics %s, log %s, sessions %s (%d loaded)",
            self.config.transparent, self.config.dns, proxy or "off", self.config.control.url(),
            self.config.metrics or "off", self.config.log_path, self.registry.store.url, loaded,
        )
        try:
            await self.master.run()
        finally:
            if watcher:
                watcher.cancel()
            self.registry.store.close()
            for server in self._http_servers:
                server.stop()
            if self.config.control.unix and self.worker is None:
                Path(self.config.control.unix).unlink(missing_ok=True)
            self.audit.close()


class _MergedMetrics(tornado.web.RequestHandler):
    def initialize(self, pool: workers.Pool) -> None:
        self.pool = pool

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(await self.pool.exposition())


class Supervisor(Gateway):
    """`workers: N` > 1: the control API, merged metrics and SIGHUP here; N worker processes do the proxying."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.pool = workers.Pool(config)

    def ready(self) -> bool:
        return self.pool.ready()

    async def run(self) -> None:
        Path(self.config.ca_dir).mkdir(parents=True, exist_ok=True)
        os.chmod(self.config.ca_dir, 0o755)
        # The CA is made once, here, before any worker starts: N workers racing to create it would disagree.
        if not ca.ensure(self.config.ca_dir, self.config.ca_name_constraints, self.config.source):
            from mitmproxy import certs
            certs.CertStore.from_store(self.config.ca_dir, "mitmproxy", 2048)
        for key in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
            path = Path(self.config.ca_dir, key)
            if path.exists():
                os.chmod(path, 0o600)
        bundle = write_sandbox_bundle(self.config)
        try:
            loaded = self.registry.load()
        except SessionStoreUnavailable as e:  # a shared store: its watcher keeps trying; until then, refuse
            logger.error("%s", e)
            loaded = 0
        control = ControlAPI(self.registry, self.config.control_token(), self.ready, None, self.store, bundle,
                             workers=self.pool)
        self._serve_http(control.application(), self.config.control.tcp, self.config.control.unix)
        if self.config.metrics:
            self._serve_http(tornado.web.Application([(r"/metrics", _MergedMetrics, {"pool": self.pool})],
                                                     log_function=lambda handler: None), self.config.metrics)
        watch = getattr(self.registry.store, "watch", None)  # Redis: sessions other replicas make
        watcher = asyncio.ensure_future(watch(self.registry.apply, self.registry.ids)) if watch else None
        loop = asyncio.get_running_loop()
        supervise = asyncio.ensure_future(self.pool.run())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        logger.warning("egressgw supervisor up: %d workers (transparent %s+k, dns %s+k, proxy %s), control %s, "
                       "metrics %s, sessions %s (%d loaded)", len(self.pool), self.config.transparent,
                       self.config.dns, f"{self.config.proxy}+k" if self.config.proxy else "off",
                       self.config.control.url(), self.config.metrics or "off", self.registry.store.url, loaded)
        try:
            await stop.wait()
        finally:
            await self.pool.stop()
            supervise.cancel()
            if watcher:
                watcher.cancel()
            self.registry.store.close()
            for server in self._http_servers:
                server.stop()
            if self.config.control.unix:
                Path(self.config.control.unix).unlink(missing_ok=True)
            self.audit.close()


def run(config: Config, worker: int | None = None) -> None:
    """One process (workers: 1), a supervisor (workers: N), or worker `worker` of a supervisor."""
    if worker is not None:
        asyncio.run(Gateway(config, worker).run())
    elif config.workers > 1:
        asyncio.run(Supervisor(config).run())
    else:
        asyncio.run(Gateway(config).run())
