"""The lab network: a gateway namespace, an origin namespace and their servers.

::

    <prefix>-gw                                   <prefix>-org
      lo                                            lo: 198.18.1.10 allowed.test, .11 other.test, ...
      <prefix>-g 198.18.0.1/24 ═══ veth ═══ <prefix>-o 198.18.0.2/24
      route 198.18.0.0/15 via 198.18.0.2           DNS server 198.18.0.2:53 (udp+tcp)
      (no default route)                           origin: http 80/8000, https 443/4443,
                                                   tcp 22/9999, udp 443/9999 on every address;
                                                   foreign resolver 198.18.1.53: udp+tcp 53, tcp 853
                                                   optional nginx: http 8080, https 8443

Nothing in either namespace can reach a public address: the gateway namespace
only routes 198.18.0.0/15 and the origin namespace only knows its own links.

Use as a context manager::

    with Lab() as lab:
        lab.run_in(lab.gw_ns, ["curl", "--cacert", lab.ca_cert, "https://allowed.test/"])
        assert lab.records(kind="http", sni="allowed.test")

``call_in(ns, fn)`` runs ``fn`` in a thread that has entered ``ns``: sockets it
creates stay in that namespace, so tests can talk to the lab without a subprocess.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .ca import CA, make_ca
from .records import clear_records, read_records

__all__ = [
    "Lab",
    "LabError",
    "DEFAULT_HOSTS",
    "DEFAULT_WRONG_CERT",
    "FOREIGN_RESOLVER",
    "GW_ADDR",
    "ORIGIN_ADDR",
    "LAB_NET",
    "default_records",
    "in_netns",
    "cleanup",
]

T = TypeVar("T")

GW_ADDR = "198.18.0.1"
ORIGIN_ADDR = "198.18.0.2"
LINK_PREFIX = 24
LAB_NET = "198.18.0.0/15"
FOREIGN_RESOLVER = "198.18.1.53"
SANDBOX_PRIVATE_ADDR = "10.211.255.254"
METADATA_ADDR = "169.254.169.254"

DEFAULT_HOSTS: dict[str, str] = {
    "allowed.test": "198.18.1.10",
    "other.test": "198.18.1.11",
    "denied.test": "198.18.1.12",
    "api.allowed.test": "198.18.1.13",
    "wrongcert.test": "198.18.1.14",
}
# host name -> the (different) name its certificate is issued for
DEFAULT_WRONG_CERT: dict[str, str] = {"wrongcert.test": "elsewhere.test"}

HTTP_PORTS = (80, 8000)
HTTPS_PORTS = (443, 4443)
TCP_PORTS = (22, 9999)
UDP_PORTS = (443, 9999)
NGINX_HTTP_PORT = 8080
NGINX_HTTPS_PORT = 8443
NGINX_1M = 1024 * 1024

_REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_MAX_PREFIX = 12  # "<prefix>-g" must fit IFNAMSIZ-1 = 15


class LabError(RuntimeError):
    """The lab could not be built (or a command inside it failed)."""


# ---- helpers ------------------------------------------------------------------------


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip"] + (["-n", ns] if ns else []) + list(args)
    p = subprocess.run(argv, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {p.stderr.strip()}")
    return p


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def in_netns(ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh thread that entered network namespace ``ns``.

    Sockets created by ``fn`` belong to ``ns`` and can be used afterwards from
    any thread. Exceptions propagate.
    """
    result: list[Any] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.setns(fd, os.CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            error.append(e)

    t = threading.Thread(target=runner, name=f"netns:{ns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _kill_netns_pids(ns: str, sig: int = signal.SIGKILL) -> None:
    p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for tok in p.stdout.split():
        if tok.isdigit() and int(tok) != os.getpid():
            try:
                os.kill(int(tok), sig)
            except ProcessLookupError:
                pass


def cleanup(prefix: str) -> list[str]:
    """Remove a (crashed) lab's namespaces ``<prefix>-gw``/``<prefix>-org``.

    Processes still running inside them are killed. Returns the names removed.
    """
    removed = []
    for ns in (f"{prefix}-gw", f"{prefix}-org"):
        if _netns_exists(ns):
            _kill_netns_pids(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
        d = Path("/etc/netns") / ns
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    return removed


def default_records(
    hosts: Mapping[str, str] = DEFAULT_HOSTS,
) -> dict[str, dict[str, Any]]:
    """The lab DNS zone for ``hosts`` (config format of :mod:`gateway.lab.dnsserver`).

    Besides one A record per host:

    * ``shared.test``            same address as allowed.test (shared CDN address)
    * ``rebind.allowed.test``    127.0.0.1
    * ``private.allowed.test``   10.211.255.254 (inside the sandbox pool)
    * ``meta.allowed.test``      169.254.169.254 (cloud metadata)
    * ``mixed.allowed.test``     allowed.test's address and 10.211.255.254
    * ``alias.allowed.test``     CNAME allowed.test.
    * ``cname.allowed.test``     CNAME denied.test. (CNAME to another name)
    * ``big.allowed.test``       A allowed.test + a TXT set too big for 512-byte UDP
    * ``txt.test``               TXT "hello from the lab"
    * ``v6.test``                AAAA 2001:db8::10 (unreachable)
    * ``*.wild.test``            allowed.test's address
    * ``servfail.test`` (SERVFAIL) and ``timeout.test`` (never answered) are in
      the DNS config's ``servfail``/``drop`` lists, not here.
    """
    recs: dict[str, dict[str, Any]] = {}
    for name, addr in hosts.items():
        rtype = "AAAA" if ":" in addr else "A"
        recs.setdefault(f"{name.rstrip('.')}.", {}).setdefault(rtype, []).append(addr)
    main = hosts.get("allowed.test") or next(iter(hosts.values()), ORIGIN_ADDR)
    recs.update(
        {
            "shared.test.": {"A": [main]},
            "rebind.allowed.test.": {"A": ["127.0.0.1"]},
            "private.allowed.test.": {"A": [SANDBOX_PRIVATE_ADDR]},
            "meta.allowed.test.": {"A": [METADATA_ADDR]},
            "mixed.allowed.test.": {"A": [main, SANDBOX_PRIVATE_ADDR]},
            "alias.allowed.test.": {"CNAME": "allowed.test."},
            "big.allowed.test.": {
                "A": [main],
                "TXT": [f"{i:02d}-" + "x" * 96 for i in range(12)],
            },
            "txt.test.": {"TXT": ["hello from the lab"]},
            "v6.test.": {"AAAA": ["2001:db8::10"]},
            "*.wild.test.": {"A": [main]},
        }
    )
    if "denied.test" in hosts:
        recs["cname.allowed.test."] = {"CNAME": "denied.test."}
    return recs


# ---- the lab --------------------------------------------------------------------------


class Lab:
    """Build/tear down the lab. See the module docstring.

    Attributes after :meth:`start`: ``prefix``, ``gw_ns``, ``origin_ns``,
    ``gw_if``/``origin_if`` (veth names), ``gw_addr`` (198.18.0.1),
    ``origin_addr``/``dns_addr`` (198.18.0.2), ``dns_port`` (53),
    ``foreign_resolver`` (198.18.1.53), ``hosts`` (name -> address),
    ``zone`` (DNS records), ``work`` (Path), ``ca`` (:class:`CA`),
    ``ca_cert`` (Path of ``ca.pem``), ``certs`` (SNI name -> (cert, key)),
    ``default_cert``, ``record_file``, ``dns_record_file``, ``nginx`` (bool),
    ``nginx_http_port``/``nginx_https_port``.
    """

    def __init__(
        self,
        prefix: str | None = None,
        *,
        work: str | os.PathLike[str] | None = None,
        hosts: Mapping[str, str] | None = None,
        extra_records: Mapping[str, dict[str, Any] | None] | None = None,
        wrong_cert: Mapping[str, str] | None = None,
        nginx: bool = False,
        nginx_workers: int = 2,
        resolv_conf: bool = True,
        record: bool = True,
        keep_work: bool = False,
        start_timeout: float = 20.0,
        dns_forward: Mapping[str, tuple[str, int]] | None = None,
    ):
        """
        prefix        namespace/interface prefix; default ``egl`` + 4 hex digits
        work          directory for CA, certs, configs, logs and records; default a
                      fresh temp dir, removed by :meth:`stop` unless ``keep_work``
        hosts         name -> address served by the origin (replaces DEFAULT_HOSTS)
        extra_records merged into the DNS zone (a ``None`` value removes a name)
        wrong_cert    host -> other name its certificate is issued for
        nginx         also start nginx on 8080 (http) / 8443 (https, h2)
        resolv_conf   write /etc/netns/<ns>/resolv.conf pointing at the lab DNS, so
                      ``ip netns exec`` programs resolve lab names
        record        False: the origin records nothing (benchmarks)
        dns_forward   zone -> (address, port): the lab DNS delegates that zone to a server
                      there, e.g. ``{"t.allowed.test": ("127.0.0.1", 5300)}`` for an iodined
                      a test runs in the origin namespace (queries are recorded as usual)
        """
        self.prefix = prefix or f"egl{secrets.token_hex(2)}"
        if not (
            0 < len(self.prefix) <= _MAX_PREFIX
            and self.prefix.replace("-", "").isalnum()
            and self.prefix.isascii()
        ):
            raise ValueError(f"lab prefix {self.prefix!r}: 1-{_MAX_PREFIX} chars of [A-Za-z0-9-]")
        self.gw_ns = f"{self.prefix}-gw"
        self.origin_ns = f"{self.prefix}-org"
        self.gw_if = f"{self.prefix}-g"
        self.origin_if = f"{self.prefix}-o"
        self.gw_addr = GW_ADDR
        self.origin_addr = ORIGIN_ADDR
        self.dns_addr = ORIGIN_ADDR
        self.dns_port = 53
        self.foreign_resolver = FOREIGN_RESOLVER
        self.lab_net = LAB_NET
        self.hosts: dict[str, str] = dict(hosts if hosts is not None else DEFAULT_HOSTS)
        self.wrong_cert: dict[str, str] = dict(
            wrong_cert if wrong_cert is not None
            else {h: n for h, n in DEFAULT_WRONG_CERT.items() if h in self.hosts}
        )
        self.zone: dict[str, dict[str, Any]] = default_records(self.hosts)
        for name, value in (extra_records or {}).items():
            key = name if name.endswith(".") else name + "."
            if value is None:
                self.zone.pop(key, None)
            else:
                self.zone[key] = dict(value)
        self.dns_servfail = ["servfail.test."]
        self.dns_drop = ["timeout.test."]
        self.dns_forward: dict[str, list[Any]] = {
            (z if z.endswith(".") else z + "."): [str(a), int(p)] for z, (a, p) in (dns_forward or {}).items()}
        self.http_ports = HTTP_PORTS
        self.https_ports = HTTPS_PORTS
        self.tcp_ports = TCP_PORTS
        self.udp_ports = UDP_PORTS
        self.nginx = nginx
        self.nginx_workers = nginx_workers
        self.nginx_http_port = NGINX_HTTP_PORT
        self.nginx_https_port = NGINX_HTTPS_PORT
        self.resolv_conf = resolv_conf
        self.record = record
        self.start_timeout = start_timeout
        self._own_work = work is None
        self.keep_work = keep_work
        self._work: Path | None = Path(work) if work is not None else None
        self.ca: CA | None = None
        self.certs: dict[str, tuple[Path, Path]] = {}
        self.default_cert: tuple[Path, Path] | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._created_ns: list[str] = []
        self._etc_dirs: list[Path] = []
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------

    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Lab":
        """Build everything; idempotent. On failure everything built is torn down."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._stopped = False
        atexit.register(self.stop)
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            self._make_certs()
            self._make_netns()
            self._start_servers()
            self._write_info()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the servers, delete the namespaces (and the temp work dir); idempotent."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
        for proc in self._procs.values():
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for proc in self._procs.values():
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
        for ns in self._created_ns:
            # anything else started inside our namespaces (tests, a gateway...)
            _kill_netns_pids(ns)
            _ip("netns", "del", ns, check=False)
        self._created_ns.clear()
        for d in self._etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()  # /etc/netns, if nothing else uses it
            except OSError:
                pass
        self._etc_dirs.clear()
        if self._own_work and not self.keep_work and self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001
            pass

    @property
    def work(self) -> Path:
        """The work directory (a temp dir is created on first use if none was given)."""
        if self._work is None:
            self._work = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        return self._work

    @property
    def record_file(self) -> Path:
        return self.work / "origin-records.jsonl"

    @property
    def dns_record_file(self) -> Path:
        return self.work / "dns-records.jsonl"

    @property
    def ca_cert(self) -> Path:
        """``ca.pem`` of the lab CA: what clients (and the gateway's upstream checks) trust."""
        return self.ca.cert_path if self.ca is not None else self.work / "ca" / "ca.pem"

    @property
    def running(self) -> bool:
        return self._started and not self._stopped

    # ---- building -----------------------------------------------------------------

    def _make_certs(self) -> None:
        self.ca = make_ca(self.work / "ca")
        certdir = self.work / "certs"
        certs: dict[str, tuple[Path, Path]] = {}
        for name in self.hosts:
            if name in self.wrong_cert:
                continue
            pair = self.ca.issue([name, f"*.{name}"], certdir, name)
            certs[name] = pair
            certs.setdefault(f"*.{name}", pair)
        for name, other in self.wrong_cert.items():
            certs[name] = self.ca.issue([other], certdir, f"wrong-{name}")
        # names in the zone without a host of their own: wildcards first, then
        # names no wildcard covers (others fall back to the default certificate)
        names = [k.rstrip(".") for k in self.zone]
        for name in names:
            if name.startswith("*.") and name not in certs:
                certs[name] = self.ca.issue([name, name[2:]], certdir, "wild-" + name[2:])
        for name in names:
            if name in certs or name in self.hosts or name.startswith("*."):
                continue
            parent = name.split(".", 1)[1] if "." in name else ""
            if parent and f"*.{parent}" in certs:
                continue
            certs[name] = self.ca.issue([name], certdir, name)
        ips = list(dict.fromkeys([*self.hosts.values(), self.origin_addr, self.foreign_resolver]))
        self.default_cert = self.ca.issue(["lab-default.test"], certdir, "lab-default", ips=ips)
        self.certs = certs

    def _make_netns(self) -> None:
        for ns in (self.gw_ns, self.origin_ns):
            if _netns_exists(ns):
                raise LabError(f"network namespace {ns} already exists (stale lab? `python -m gateway.lab down {self.prefix}`)")
        for ns in (self.gw_ns, self.origin_ns):
            _ip("netns", "add", ns)
            self._created_ns.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        # create the veth pair directly inside the namespaces: nothing touches the host's
        _ip("link", "add", self.gw_if, "type", "veth", "peer", "name", self.origin_if,
            "netns", self.origin_ns, ns=self.gw_ns)
        _ip("addr", "add", f"{self.gw_addr}/{LINK_PREFIX}", "dev", self.gw_if, ns=self.gw_ns)
        _ip("link", "set", self.gw_if, "up", ns=self.gw_ns)
        _ip("route", "add", self.lab_net, "via", self.origin_addr, "dev", self.gw_if, ns=self.gw_ns)
        _ip("addr", "add", f"{self.origin_addr}/{LINK_PREFIX}", "dev", self.origin_if, ns=self.origin_ns)
        _ip("link", "set", self.origin_if, "up", ns=self.origin_ns)
        for addr in dict.fromkeys([*self.hosts.values(), self.foreign_resolver]):
            plen = 128 if ":" in addr else 32
            _ip("addr", "add", f"{addr}/{plen}", "dev", "lo", ns=self.origin_ns)
        if self.resolv_conf:
            for ns in (self.gw_ns, self.origin_ns):
                d = Path("/etc/netns") / ns
                d.mkdir(parents=True, exist_ok=True)
                self._etc_dirs.append(d)
                (d / "resolv.conf").write_text(f"nameserver {self.dns_addr}\noptions timeout:1 attempts:2\n")

    def _dns_config(self) -> dict[str, Any]:
        return {
            "listen": [self.dns_addr, self.dns_port],
            "record": str(self.dns_record_file),
            "ttl": 5,
            "records": self.zone,
            "servfail": self.dns_servfail,
            "drop": self.dns_drop,
            "forward": self.dns_forward,
        }

    def _origin_config(self) -> dict[str, Any]:
        fr = self.foreign_resolver
        assert self.default_cert is not None
        return {
            "record": str(self.record_file) if self.record else None,
            "bind": "0.0.0.0",
            "http_ports": list(self.http_ports),
            "https_ports": list(self.https_ports),
            "certs": {name: [str(c), str(k)] for name, (c, k) in self.certs.items()},
            "default_cert": [str(self.default_cert[0]), str(self.default_cert[1])],
            "tcp_ports": [*self.tcp_ports, [fr, 53], [fr, 853]],
            "udp_ports": [*self.udp_ports, [fr, 53]],
        }

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        pp = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + pp if pp else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.origin_ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=str(_REPO_ROOT),
                start_new_session=True,
            )
        finally:
            log.close()
        self._procs[name] = proc
        return proc

    def _log_tail(self, name: str, n: int = 30) -> str:
        try:
            lines = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _start_python_server(self, name: str, module: str, config: dict[str, Any]) -> Path:
        cfg = self.work / f"{name}.json"
        cfg.write_text(json.dumps(config, indent=1))
        ready = self.work / f"{name}.ready"
        ready.unlink(missing_ok=True)
        self._spawn(name, [sys.executable, "-m", module, "--config", str(cfg), "--ready", str(ready)])
        return ready

    def _wait_ready(self, waiting: dict[str, Callable[[], bool]]) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = dict(waiting)
        while pending:
            for name in list(pending):
                proc = self._procs[name]
                if proc.poll() is not None:
                    raise LabError(f"lab {name} exited with {proc.returncode}:\n{self._log_tail(name)}")
                if pending[name]():
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LabError(
                    f"lab servers not ready after {self.start_timeout}s: {sorted(pending)}\n"
                    + "\n".join(self._log_tail(n) for n in pending)
                )
            time.sleep(0.02)

    def _start_servers(self) -> None:
        dns_ready = self._start_python_server("dns", "gateway.lab.dnsserver", self._dns_config())
        origin_ready = self._start_python_server("origin", "gateway.lab.origin", self._origin_config())
        waiting: dict[str, Callable[[], bool]] = {
            "dns": dns_ready.exists,
            "origin": origin_ready.exists,
        }
        if self.nginx:
            self._start_nginx()
            waiting["nginx"] = lambda: self._tcp_ok(self.origin_addr, self.nginx_https_port)
        self._wait_ready(waiting)
        self._check_paths()

    def _tcp_ok(self, addr: str, port: int, timeout: float = 0.5) -> bool:
        def probe() -> bool:
            try:
                with socket.create_connection((addr, port), timeout=timeout):
                    return True
            except OSError:
                return False

        return in_netns(self.gw_ns, probe)

    def _check_paths(self) -> None:
        """From the gateway namespace: an origin address answers TCP and the DNS answers."""
        import dns.message
        import dns.query

        addr = next(iter(self.hosts.values()), self.origin_addr)
        if not self._tcp_ok(addr, self.http_ports[0], timeout=2):
            raise LabError(f"{addr}:{self.http_ports[0]} unreachable from {self.gw_ns}\n{self._log_tail('origin')}")
        q = dns.message.make_query("lab-probe.test.", "A")
        try:
            in_netns(self.gw_ns, dns.query.udp, q, self.dns_addr, timeout=2, port=self.dns_port)
        except Exception as e:  # noqa: BLE001
            raise LabError(f"lab DNS {self.dns_addr} unreachable from {self.gw_ns}: {e}\n{self._log_tail('dns')}") from e
        clear_records(self.dns_record_file)
        clear_records(self.record_file)

    def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        root = self.work / "nginx"
        for sub in ("tmp", "www/bytes"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        blob = root / "www" / "bytes" / "1m"
        if not blob.exists() or blob.stat().st_size != NGINX_1M:
            blob.write_bytes(os.urandom(NGINX_1M))
        big = root / "www" / "bytes" / "1g"  # 1 GiB of zeros, sparse: no disk space (bench/extras.py)
        if not big.exists() or big.stat().st_size != 1 << 30:
            with open(big, "wb") as f:
                f.truncate(1 << 30)
        assert self.default_cert is not None
        # one server block per certificate, named by every SNI name using it
        by_cert: dict[tuple[Path, Path], list[str]] = {}
        for name, pair in self.certs.items():
            by_cert.setdefault(pair, []).append(name)
        locations = f"""
        location / {{ return 200 "ok\\n"; }}
        location = /bytes/1m {{ root {root / 'www'}; default_type application/octet-stream; }}
        location = /bytes/1g {{ root {root / 'www'}; default_type application/octet-stream; }}
"""

        def server(names: Iterable[str], pair: tuple[Path, Path], default: bool) -> str:
            d = " default_server" if default else ""
            plain = f"        listen {self.nginx_http_port}{d};\n" if default else ""
            return f"""
    server {{
{plain}        listen {self.nginx_https_port} ssl http2{d};
        server_name {' '.join(names) if names else '_'};
        ssl_certificate {pair[0]};
        ssl_certificate_key {pair[1]};
{locations}    }}
"""

        servers = server([], self.default_cert, True)
        servers += "".join(server(names, pair, False) for pair, names in by_cert.items())
        tmp = root / "tmp"
        conf = f"""# generated by gateway.lab.topology
daemon off;
master_process on;
user root;
worker_processes {int(self.nginx_workers)};
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    sendfile on;
    tcp_nopush on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:lab:1m;
{servers}}}
"""
        conf_path = root / "nginx.conf"
        conf_path.write_text(conf)
        test = subprocess.run(
            [nginx, "-t", "-q", "-p", str(root), "-c", str(conf_path), "-e", str(root / "error.log")],
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            raise LabError(f"nginx config rejected:\n{test.stderr}")
        self._spawn("nginx", [nginx, "-p", str(root), "-c", str(conf_path), "-e", str(root / "error.log")])

    def _write_info(self) -> None:
        (self.work / "lab.json").write_text(json.dumps(self.info(), indent=1))

    # ---- using the lab ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Everything a demo or bench script needs to know, JSON-serialisable."""
        return {
            "prefix": self.prefix,
            "gw_ns": self.gw_ns,
            "origin_ns": self.origin_ns,
            "gw_if": self.gw_if,
            "origin_if": self.origin_if,
            "gw_addr": self.gw_addr,
            "origin_addr": self.origin_addr,
            "dns": [self.dns_addr, self.dns_port],
            "foreign_resolver": self.foreign_resolver,
            "lab_net": self.lab_net,
            "hosts": self.hosts,
            "wrong_cert": self.wrong_cert,
            "dns_names": sorted(k.rstrip(".") for k in self.zone),
            "dns_servfail": self.dns_servfail,
            "dns_drop": self.dns_drop,
            "http_ports": list(self.http_ports),
            "https_ports": list(self.https_ports),
            "tcp_ports": list(self.tcp_ports),
            "udp_ports": list(self.udp_ports),
            "nginx": self.nginx,
            "nginx_http_port": self.nginx_http_port if self.nginx else None,
            "nginx_https_port": self.nginx_https_port if self.nginx else None,
            "work": str(self.work),
            "ca_cert": str(self.ca_cert),
            "record_file": str(self.record_file),
            "dns_record_file": str(self.dns_record_file),
            "pids": {name: p.pid for name, p in self._procs.items()},
        }

    def records(self, **filters: Any) -> list[dict[str, Any]]:
        """Origin records (kinds ``http``, ``tls``, ``tcp``, ``udp``) matching ``filters``."""
        return read_records(self.record_file, **filters)

    def dns_records(self, **filters: Any) -> list[dict[str, Any]]:
        """DNS server records (``kind: "dns"``) matching ``filters``."""
        return read_records(self.dns_record_file, **filters)

    def clear_records(self) -> None:
        """Empty both record files."""
        clear_records(self.record_file)
        clear_records(self.dns_record_file)

    def wait_records(
        self, *, dns: bool = False, count: int = 1, timeout: float = 5.0, **filters: Any
    ) -> list[dict[str, Any]]:
        """Poll until at least ``count`` matching records exist; returns them (maybe fewer on timeout)."""
        reader = self.dns_records if dns else self.records
        deadline = time.monotonic() + timeout
        while True:
            recs = reader(**filters)
            if len(recs) >= count or time.monotonic() > deadline:
                return recs
            time.sleep(0.02)

    def _ns_argv(self, ns: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["ip", "netns", "exec", ns, *[os.fspath(a) for a in argv]]

    def run_in(self, ns: str, argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside namespace ``ns``.

        Defaults: ``capture_output=True, text=True, timeout=60``, and an
        environment whose PYTHONPATH finds this repository.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("env", self._env())
        return subprocess.run(self._ns_argv(ns, argv), **kw)

    def popen_in(self, ns: str, argv: Sequence[str | os.PathLike[str]], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside ``ns`` (killed by :meth:`stop` if still running)."""
        kw.setdefault("env", self._env())
        return subprocess.Popen(self._ns_argv(ns, argv), **kw)

    def call_in(self, ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread inside ``ns`` (see :func:`in_netns`)."""
        return in_netns(ns, fn, *args, **kwargs)

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket living in namespace ``ns``."""
        return in_netns(ns, socket.socket, family, type)

    def set_dns_records(
        self, records: Mapping[str, dict[str, Any] | None], *, replace: bool = False, timeout: float = 5.0
    ) -> None:
        """Change the DNS zone of the running server (``None`` removes a name) and wait for the reload."""
        zone = {} if replace else copy.deepcopy(self.zone)
        for name, value in records.items():
            key = name if name.endswith(".") else name + "."
            if value is None:
                zone.pop(key, None)
            else:
                zone[key] = dict(value)
        self.zone = zone
        cfg = self.work / "dns.json"
        ready = self.work / "dns.ready"
        before = json.loads(ready.read_text())["generation"]
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._dns_config(), indent=1))
        os.replace(tmp, cfg)
        self._procs["dns"].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if json.loads(ready.read_text())["generation"] > before:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        raise LabError(f"DNS server did not reload within {timeout}s\n{self._log_tail('dns')}")
