"""An authoritative-for-everything DNS server for the lab (dnspython).

Run as ``python -m gateway.lab.dnsserver --config FILE.json [--ready FILE]``.

Config (JSON)::

    {
      "listen": ["198.18.0.2", 53],            # UDP and TCP
      "record": "/path/dns.jsonl",             # null: record nothing
      "ttl": 5,                                # default TTL (also negative TTL)
      "records": {
        "allowed.test.": {"A": ["198.18.1.10"], "AAAA": ["..."], "TXT": ["..."]},
        "alias.test.":   {"CNAME": "allowed.test."},
        "*.wild.test.":  {"A": ["198.18.1.10"]},
        "slow.test.":    {"A": ["198.18.1.10"], "ttl": 60}
      },
      "servfail": ["broken.test."],            # answered SERVFAIL
      "drop": ["timeout.test."],               # never answered
      "forward": {"t.allowed.test.": ["127.0.0.1", 5300]}  # delegated zones
    }

Record values are a string or a list of strings in presentation format, for
any type dnspython knows (A, AAAA, TXT, CNAME, MX, ...). TXT values are taken
as one character-string each unless already quoted.

Answers: exact names first; otherwise the closest encloser's ``*.`` wildcard
(RFC 4592); CNAMEs are followed inside the zone; a name that exists without
the asked type gets NOERROR/NODATA; anything else NXDOMAIN. Negative answers
carry a synthesized SOA. UDP answers that don't fit (512 bytes, or the EDNS
payload size) come back truncated (TC). Every query is recorded as a JSON line
(``kind: "dns"``: qname, qtype, peer, transport, rcode, answers); malformed
packets are recorded with ``error`` and otherwise ignored.

``forward`` delegates zones: a query for a zone's name or any name under it is
relayed verbatim to that server (UDP, or TCP when it came over TCP) in a thread
of its own, and its answer relayed back verbatim, so a server that holds
queries (iodined) blocks nothing else. Recorded like any query, with
``forwarded: "addr:port"`` and ``received`` (epoch seconds it arrived; no answer within FORWARD_TIMEOUT: ``rcode: "TIMEOUT"``).

SIGHUP reloads the config file's zone (records/servfail/drop/ttl) and rewrites
the ready file with an incremented ``generation``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .records import Recorder, encode_bytes, write_ready

__all__ = ["Zone", "DNSServer", "main"]

log = logging.getLogger("egressgw.lab.dns")

TCP_IDLE_TIMEOUT = 10.0
FORWARD_TIMEOUT = 10.0
MAX_CNAME_CHAIN = 8


def _norm(name: str) -> dns.name.Name:
    return dns.name.from_text(name.strip().lower() if name.strip() else ".")


def _txt(value: str) -> str:
    v = value.strip()
    if v.startswith('"'):
        return v
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Zone:
    """The lab zone: name -> rrsets, plus SERVFAIL/drop sets."""

    def __init__(self, config: dict[str, Any]):
        self.ttl = int(config.get("ttl", 5))
        self.data: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        for raw_name, types in (config.get("records") or {}).items():
            name = _norm(raw_name)
            ttl = int(types.get("ttl", types.get("TTL", self.ttl)))
            node = self.data.setdefault(name, {})
            for tname, values in types.items():
                if tname.lower() == "ttl":
                    continue
                rdtype = dns.rdatatype.from_text(tname.upper())
                if isinstance(values, str):
                    values = [values]
                texts = [_txt(v) if rdtype == dns.rdatatype.TXT else str(v) for v in values]
                node[rdtype] = dns.rrset.from_text_list(name, ttl, dns.rdataclass.IN, rdtype, texts)
            if dns.rdatatype.CNAME in node and len(node) > 1:
                raise ValueError(f"{raw_name}: CNAME cannot coexist with other types")
        # every ancestor of a defined name exists (empty non-terminals)
        self.names: set[dns.name.Name] = set()
        for name in self.data:
            n = name
            while True:
                self.names.add(n)
                if n == dns.name.root:
                    break
                n = n.parent()
        self.forward = {_norm(n): (str(a[0]), int(a[1])) for n, a in (config.get("forward") or {}).items()}
        self.servfail = {_norm(n) for n in config.get("servfail") or []}
        self.drop = {_norm(n) for n in config.get("drop") or []}

    def forward_to(self, qname: dns.name.Name) -> tuple[str, int] | None:
        """The server a delegated zone holding ``qname`` is forwarded to, if any."""
        for zone, target in self.forward.items():
            if qname.is_subdomain(zone):
                return target
        return None

    def soa(self, qname: dns.name.Name) -> dns.rrset.RRset:
        """A synthesized SOA for negative answers, owned by qname's top label."""
        labels = qname.labels
        owner = dns.name.Name(labels[-2:]) if len(labels) >= 2 else dns.name.root
        return dns.rrset.from_text(
            owner, self.ttl, "IN", "SOA", f"ns.lab. hostmaster.lab. 1 3600 600 86400 {self.ttl}"
        )

    def _node(self, qname: dns.name.Name) -> tuple[dict[int, dns.rrset.RRset] | None, bool]:
        """(node, exists): exact node, else wildcard at the closest encloser."""
        node = self.data.get(qname)
        if node is not None:
            return node, True
        if qname in self.names:
            return {}, True  # empty non-terminal
        encloser = qname.parent() if qname != dns.name.root else qname
        while encloser not in self.names and encloser != dns.name.root:
            encloser = encloser.parent()
        wild = self.data.get(dns.name.Name((b"*",) + encloser.labels))
        if wild is not None:
            return wild, True
        return None, False

    def answer(self, qname: dns.name.Name, qtype: int) -> tuple[int, list[dns.rrset.RRset]]:
        """(rcode, answer rrsets) for one question."""
        answers: list[dns.rrset.RRset] = []
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            node, exists = self._node(name)
            if not exists:  # authoritative for everything: a dangling CNAME is NXDOMAIN too
                return dns.rcode.NXDOMAIN, answers
            assert node is not None
            if qtype == dns.rdatatype.ANY:
                for rrset in node.values():
                    answers.append(self._own(rrset, name))
                return dns.rcode.NOERROR, answers
            if qtype in node:
                answers.append(self._own(node[qtype], name))
                return dns.rcode.NOERROR, answers
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                return dns.rcode.NOERROR, answers
            answers.append(self._own(cname, name))
            name = cname[0].target  # type: ignore[attr-defined]
        return dns.rcode.NOERROR, answers

    @staticmethod
    def _own(rrset: dns.rrset.RRset, name: dns.name.Name) -> dns.rrset.RRset:
        """``rrset`` owned by ``name`` (a copy unless the owner already matches exactly)."""
        if rrset.name == name and rrset.name.labels == name.labels:
            return rrset
        out = dns.rrset.RRset(name, rrset.rdclass, rrset.rdtype)
        out.update(rrset)
        out.ttl = rrset.ttl
        return out


class DNSServer:
    """UDP + TCP DNS server answering from a :class:`Zone`, in daemon threads."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.zone = Zone(config)
        listen = config.get("listen") or ["127.0.0.1", 53]
        self.addr = str(listen[0])
        self.port = int(listen[1])
        self.recorder = Recorder(config.get("record"))
        self._stop = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    def reload(self, config: dict[str, Any]) -> None:
        self.zone = Zone(config)  # atomic swap; handlers read self.zone once

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        self._udp = socket.socket(family, socket.SOCK_DGRAM)
        self._udp.bind((self.addr, self.port))
        port = self._udp.getsockname()[1]
        self._tcp = socket.socket(family, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((self.addr, port))
        self._tcp.listen(512)
        self.port = port
        threading.Thread(target=self._udp_loop, daemon=True, name="dns-udp").start()
        threading.Thread(target=self._tcp_loop, daemon=True, name="dns-tcp").start()
        return self.addr, port

    def stop(self) -> None:
        self._stop.set()
        for s in (self._udp, self._tcp):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass

    # ---- transports ---------------------------------------------------------------

    def _udp_loop(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                wire, peer = self._udp.recvfrom(65535)
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                out = self.handle(wire, peer, "udp", reply=lambda data, peer=peer: self._udp.sendto(data, peer))
                if out is not None:
                    self._udp.sendto(out, peer)
            except Exception:  # noqa: BLE001 - never die on a packet
                log.exception("udp packet from %s", peer)

    def _tcp_loop(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._tcp.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            threading.Thread(target=self._tcp_conn, args=(conn, peer), daemon=True).start()

    @staticmethod
    def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf.extend(chunk)
        return bytes(buf)

    def _tcp_conn(self, conn: socket.socket, peer: Any) -> None:
        try:
            conn.settimeout(TCP_IDLE_TIMEOUT)
            while not self._stop.is_set():
                head = self._recv_exact(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                wire = self._recv_exact(conn, length) if length else b""
                if wire is None:
                    return
                out = self.handle(wire, peer, "tcp", reply=lambda data: conn.sendall(struct.pack("!H", len(data)) + data))
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            pass
        except Exception:  # noqa: BLE001
            log.exception("tcp connection from %s", peer)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _forward(self, wire: bytes, target: tuple[str, int], transport: str, reply: Any, rec: dict) -> None:
        rec = {**rec, "forwarded": f"{target[0]}:{target[1]}"}
        try:
            data = _relay(wire, target, transport)
        except OSError as e:
            self.recorder.write("dns", **rec, rcode="TIMEOUT" if isinstance(e, TimeoutError) else "FORWARD-ERROR",
                                answers=[])
            return
        try:
            answer = dns.message.from_wire(data)
            rec.update(rcode=dns.rcode.to_text(answer.rcode()),
                       answers=[line for rrset in answer.answer for line in rrset.to_text().splitlines()])
        except Exception as e:  # noqa: BLE001 - record what came back, relay it anyway
            rec.update(rcode="UNPARSED", answers=[], error=f"{e.__class__.__name__}")
        self.recorder.write("dns", **rec)
        try:
            reply(data)
        except OSError:
            pass

    # ---- one message ------------------------------------------------------------------

    def handle(self, wire: bytes, peer: Any, transport: str, reply: Any = None) -> bytes | None:
        """Answer one wire-format query; ``None`` means send nothing (now: a forwarded
        query's answer goes to ``reply(data)`` later, from its own thread)."""
        base = {"peer": peer[0], "peer_port": peer[1], "transport": transport}
        try:
            query = dns.message.from_wire(wire)
        except Exception as e:  # noqa: BLE001 - dnspython raises many kinds
            text, enc = encode_bytes(wire[:512])
            self.recorder.write("dns", **base, error=f"malformed: {e.__class__.__name__}: {e}",
                                data=text, data_encoding=enc, data_len=len(wire))
            log.info("malformed packet from %s (%s): %s", peer[0], transport, e)
            return None
        if query.flags & dns.flags.QR:
            self.recorder.write("dns", **base, id=query.id, error="response, not a query")
            return None

        zone = self.zone
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        q = query.question[0] if len(query.question) == 1 else None
        rec: dict[str, Any] = {**base, "id": query.id}
        if q is not None:
            rec.update(
                qname=q.name.to_text(),
                qtype=dns.rdatatype.to_text(q.rdtype),
                qclass=dns.rdataclass.to_text(q.rdclass),
            )
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif q is None:
            response.set_rcode(dns.rcode.FORMERR)
        elif q.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
        elif reply is not None and zone.forward_to(q.name.canonicalize()) is not None:
            target = zone.forward_to(q.name.canonicalize())
            rec["received"] = time.time()  # recorded once the answer is back: maybe seconds later
            threading.Thread(target=self._forward, args=(wire, target, transport, reply, rec), daemon=True).start()
            return None
        elif q.name.canonicalize() in zone.drop:
            self.recorder.write("dns", **rec, rcode="DROPPED", answers=[])
            return None
        elif q.name.canonicalize() in zone.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            qname = q.name.canonicalize()
            rcode, answers = zone.answer(qname, q.rdtype)
            response.set_rcode(rcode)
            for rrset in answers:
                if rrset.name == qname and q.name != qname:
                    rrset = Zone._own(rrset, q.name)  # answer in the client's case
                response.answer.append(rrset)
            satisfied = bool(answers) and (
                q.rdtype in (dns.rdatatype.ANY, dns.rdatatype.CNAME)
                or answers[-1].rdtype == q.rdtype
            )
            if not satisfied:  # NXDOMAIN or NODATA: SOA for negative caching
                response.authority.append(zone.soa(qname))
        rec["rcode"] = dns.rcode.to_text(response.rcode())
        rec["answers"] = [line for rrset in response.answer for line in rrset.to_text().splitlines()]

        max_size = 65535
        if transport == "udp":
            max_size = max(512, query.payload) if query.edns >= 0 else 512
        try:
            out = response.to_wire(max_size=max_size)
            rec["truncated"] = False
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            out = response.to_wire(max_size=max_size)
            rec["truncated"] = True
        self.recorder.write("dns", **rec)
        return out


def _relay(wire: bytes, target: tuple[str, int], transport: str) -> bytes:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    if transport == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(FORWARD_TIMEOUT)
            s.sendto(wire, target)
            while True:
                data, src = s.recvfrom(65535)
                if src[:2] == target and data[:2] == wire[:2]:
                    return data
    with socket.create_connection(target, timeout=FORWARD_TIMEOUT) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = DNSServer._recv_exact(s, 2)
        data = DNSServer._recv_exact(s, struct.unpack("!H", head)[0]) if head else None
        if data is None:
            raise OSError("connection closed")
        return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.lab.dnsserver", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON config file")
    ap.add_argument("--ready", help="write this file (JSON) once listening, and after each reload")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s dns %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = json.loads(Path(args.config).read_text())
    server = DNSServer(config)
    addr, port = server.start()
    log.info("listening on %s:%d (udp+tcp)", addr, port)
    generation = 0

    def ready() -> None:
        if args.ready:
            write_ready(args.ready, {"pid": os.getpid(), "listen": [addr, port], "generation": generation})

    stop = threading.Event()
    reload_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    ready()
    while not stop.is_set():
        if reload_requested.wait(0.2):
            reload_requested.clear()
            try:
                server.reload(json.loads(Path(args.config).read_text()))
                generation += 1
                log.info("zone reloaded (generation %d)", generation)
            except Exception:  # noqa: BLE001 - keep the old zone
                log.exception("reload failed; keeping the old zone")
                generation += 1  # still signal that the reload was handled
            ready()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
