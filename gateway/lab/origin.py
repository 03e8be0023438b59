"""A recording origin server for the lab.

Run as ``python -m gateway.lab.origin --config FILE.json [--ready FILE]``.

Config (JSON)::

    {
      "record": "/path/records.jsonl",        # null: record nothing (benchmarks)
      "bind": "0.0.0.0",                       # default address for every listener
      "http_port": 80, "https_port": 443,      # 0/null disables
      "http_ports": [...], "https_ports": [...],   # extra ports (int or [addr, port])
      "certs": {"name": [cert, key], "*.name": [cert, key]},   # SNI -> certificate
      "default_cert": [cert, key],             # unknown or missing SNI
      "tcp_ports": [22, 9999, ["198.18.1.53", 853]],
      "udp_ports": [443, 9999, ["198.18.1.53", 53]]
    }

A port entry is ``port`` (bound on ``bind``) or ``[addr, port]``.

HTTP (plain and TLS, HTTP/1.1 with keep-alive, chunked request bodies,
``Expect: 100-continue``; ALPN offers only ``http/1.1``):

* ``/echo``              any method: JSON with method, path, headers, body
                         (``?pad=N``: after N bytes of padding, for large responses)
* ``/early?delay=S``     any method: ``103 Early Hints`` at once, then after S seconds
                         (default 1, at most 10) the answer of any other path
* ``/status/<code>``     any method: that status
* ``/redirect?to=<url>`` any method: 302 to ``url``
* ``GET /bytes/<n>``     ``n`` bytes (``n`` may end in k, m or g: binary units)
* other methods          200 ``{"received": body_len}``
* other ``GET``/``HEAD`` 200 ``hello from <Host>\\n``

Every response carries ``X-Lab-Local: addr:port`` (the address the client
reached) and, over TLS, ``X-Lab-SNI``.

Raw TCP recorders send a banner (``SSH-2.0-lab\\r\\n`` on port 22, ``lab-tcp\\n``
elsewhere), record the first bytes, then echo. UDP recorders record every
datagram and echo it back (except on port 53).

Records (JSON lines, see :mod:`gateway.lab.records`) have ``kind`` ``http``,
``tls``, ``tcp`` or ``udp``. A ``tls`` record (sni, error) is written for a
failed handshake and for a TLS connection closed before its first request --
with TLS 1.3 that is how a client refusing our certificate shows up. A record is written
before the matching response, so a client that has its answer can read it.

When everything is bound, the ready file (if given) gets a JSON object with
the pid and the bound listeners.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable

from .records import Recorder, encode_bytes, iter_ports, read_records, write_ready

__all__ = ["OriginServer", "read_records", "main", "BODY_LIMIT"]

log = logging.getLogger("egressgw.lab.origin")

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
BODY_LIMIT = 64 * 1024  # bytes of a request body kept in the record
TCP_FIRST_LIMIT = 4096
UDP_DATA_LIMIT = 4096
MAX_LINE = 65536
MAX_HEADERS = 200
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
TCP_FIRST_TIMEOUT = 1.0
TCP_IDLE_TIMEOUT = 60.0
MAX_BYTES = 16 * 1024**3

# One 64 KiB block of fixed pseudo-random bytes, served by /bytes/<n>.
_PATTERN = random.Random(0x1AB).randbytes(64 * 1024)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, received: int = 0):
        super().__init__(message)
        self.status = status
        self.received = received  # body bytes read before the request broke off


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _parse_size(text: str) -> int | None:
    text = text.strip().lower()
    mult = 1
    if text and text[-1] in "kmg":
        mult = 1024 ** ("kmg".index(text[-1]) + 1)
        text = text[:-1]
    if not text.isdigit():
        return None
    n = int(text) * mult
    return n if n <= MAX_BYTES else None


class OriginServer:
    """The servers described in the module docstring, in threads of this process."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.bind = str(config.get("bind") or "0.0.0.0")
        self.recorder = Recorder(config.get("record"))
        self._listeners: list[tuple[socket.socket, str, Callable[..., None], Any]] = []
        self._stop = threading.Event()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._default_ctx: ssl.SSLContext | None = None
        self._build_tls()

    # ---- TLS --------------------------------------------------------------

    @staticmethod
    def _context(cert: str, key: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def _build_tls(self) -> None:
        certs = self.config.get("certs") or {}
        by_files: dict[tuple[str, str], ssl.SSLContext] = {}
        for name, (cert, key) in certs.items():
            files = (str(cert), str(key))
            if files not in by_files:
                by_files[files] = self._context(*files)
            self._contexts[name.lower().rstrip(".")] = by_files[files]
        default = self.config.get("default_cert")
        if default:
            files = (str(default[0]), str(default[1]))
            # A fresh context: the default one carries the SNI callback.
            self._default_ctx = self._context(*files)
        elif by_files:
            self._default_ctx = self._context(*next(iter(by_files)))
        if self._default_ctx is not None:
            self._default_ctx.sni_callback = self._sni_callback

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context configured for ``server_name`` (exact, then ``*.parent``)."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self._contexts.get(name)
        if ctx is None and "." in name:
            ctx = self._contexts.get("*." + name.split(".", 1)[1])
        return ctx

    def _sni_callback(self, sslsock: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            sslsock._lab_sni = server_name
        except AttributeError:
            pass
        ctx = self.context_for(server_name)
        if ctx is not None:
            sslsock.context = ctx
        return None

    # ---- listeners ----------------------------------------------------------

    def _listen_tcp(self, addr: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(4096)
        return s

    def _listen_udp(self, addr: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_PKTINFO, 1)
        s.bind((addr, port))
        return s

    def _ports(self, single: str, multi: str) -> list[tuple[str, int]]:
        specs: list[Any] = []
        if self.config.get(single):
            specs.append(self.config[single])
        specs.extend(self.config.get(multi) or [])
        return list(dict.fromkeys(iter_ports(specs, self.bind)))

    def start(self) -> list[dict[str, Any]]:
        """Bind every listener and start serving in daemon threads."""
        for addr, port in self._ports("http_port", "http_ports"):
            self._listeners.append((self._listen_tcp(addr, port), "http", self._serve_http, None))
        https = self._ports("https_port", "https_ports")
        if https and self._default_ctx is None:
            raise ValueError("https ports configured but no certificates")
        for addr, port in https:
            self._listeners.append((self._listen_tcp(addr, port), "https", self._serve_http, True))
        for addr, port in iter_ports(self.config.get("tcp_ports") or [], self.bind):
            self._listeners.append((self._listen_tcp(addr, port), "tcp", self._serve_tcp, None))
        for addr, port in iter_ports(self.config.get("udp_ports") or [], self.bind):
            self._listeners.append((self._listen_udp(addr, port), "udp", self._serve_udp, None))
        bound = []
        for sock, kind, handler, arg in self._listeners:
            host, port = sock.getsockname()[:2]
            bound.append({"kind": kind, "addr": host, "port": port})
            if kind == "udp":
                target, args = handler, (sock,)
            else:
                target, args = self._accept_loop, (sock, handler, arg)
            threading.Thread(target=target, args=args, daemon=True, name=f"{kind}:{port}").start()
        return bound

    def stop(self) -> None:
        self._stop.set()
        for sock, *_ in self._listeners:
            try:
                sock.close()
            except OSError:
                pass

    def _accept_loop(self, lsock: socket.socket, handler: Callable[..., None], arg: Any) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = lsock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._guard, args=(handler, conn, peer, arg), daemon=True).start()

    @staticmethod
    def _guard(handler: Callable[..., None], conn: socket.socket, peer: Any, arg: Any) -> None:
        try:
            handler(conn, peer, arg)
        except (OSError, ssl.SSLError, ValueError):
            pass
        except Exception:  # noqa: BLE001 - a lab server must keep running
            log.exception("handler crashed")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    # ---- HTTP -----------------------------------------------------------------

    def _serve_http(self, conn: socket.socket, peer: Any, tls: bool | None) -> None:
        local = conn.getsockname()
        sni: str | None = None
        alpn: str | None = None
        sock: socket.socket = conn
        if tls:
            assert self._default_ctx is not None
            conn.settimeout(HANDSHAKE_TIMEOUT)
            ssock = self._default_ctx.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
            try:
                ssock.do_handshake()
            except (ssl.SSLError, OSError) as e:
                self.recorder.write(
                    "tls",
                    local_addr=local[0],
                    local_port=local[1],
                    peer=peer[0],
                    peer_port=peer[1],
                    sni=getattr(ssock, "_lab_sni", None),
                    error=str(e),
                )
                ssock.close()
                return
            sni = getattr(ssock, "_lab_sni", None)
            alpn = ssock.selected_alpn_protocol()
            sock = ssock
        sock.settimeout(IDLE_TIMEOUT)
        rfile = sock.makefile("rb", buffering=65536)
        conn_info = {
            "local_addr": local[0],
            "local_port": local[1],
            "peer": peer[0],
            "peer_port": peer[1],
            "tls": bool(tls),
            "sni": sni,
        }
        if tls:
            conn_info["alpn"] = alpn
        served = 0
        error: str | None = None
        try:
            while not self._stop.is_set():
                result = self._one_request(sock, rfile, conn_info)
                if result is None:
                    break
                served += 1
                if not result:
                    break
        except (OSError, ValueError) as e:
            error = f"{e.__class__.__name__}: {e}"
            raise
        finally:
            if tls and served == 0:
                # With TLS 1.3 the server's handshake completes before the client
                # has checked our certificate: a client that rejects it just goes
                # away. Record that, so "refused our certificate" is visible.
                self.recorder.write(
                    "tls",
                    **{k: v for k, v in conn_info.items() if k != "tls"},
                    error=error or "connection closed before any request",
                )
            rfile.close()
            if sock is not conn:
                try:
                    sock.close()
                except OSError:
                    pass

    def _one_request(self, sock: socket.socket, rfile: Any, info: dict[str, Any]) -> bool | None:
        """Serve one request: ``None`` at EOF before a request, else whether to keep the connection."""
        line = rfile.readline(MAX_LINE + 1)
        blank = 0
        while line in (b"\r\n", b"\n") and blank < 16:
            blank += 1
            line = rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        try:
            if len(line) > MAX_LINE:
                raise _BadRequest(414, "request line too long")
            parts = line.rstrip(b"\r\n").decode("latin-1").split(" ")
            if len(parts) != 3 or not parts[0] or not parts[1]:
                raise _BadRequest(400, "malformed request line")
            method, target, version = parts
            if not version.startswith("HTTP/1."):
                raise _BadRequest(505, "unsupported HTTP version")
            headers = self._read_headers(rfile)
        except _BadRequest as e:
            self.recorder.write("http", **info, error=str(e), raw=line[:1024].decode("latin-1"))
            self._send(sock, e.status, [("Content-Type", "text/plain")], f"{e}\n".encode(), False, info)
            return False

        hmap: dict[str, list[str]] = {}
        for k, v in headers:
            hmap.setdefault(k.lower(), []).append(v)
        conn_tokens = {t.strip().lower() for v in hmap.get("connection", []) for t in v.split(",")}
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in conn_tokens
        else:
            keep_alive = "close" not in conn_tokens

        error: str | None = None
        try:
            body, body_len = self._read_body(sock, rfile, hmap, version)
        except _BadRequest as e:
            error = str(e)
            body, body_len = b"", e.received
        text, enc = encode_bytes(body)
        rec: dict[str, Any] = {
            **info,
            "method": method,
            "path": target,
            "version": version,
            "host": (hmap.get("host") or [None])[0],
            "headers": [[k, v] for k, v in headers],
            "body": text,
            "body_encoding": enc,
            "body_len": body_len,
            "body_truncated": body_len > len(body),
        }
        if error is not None:
            rec["error"] = error
            rec["status"] = 400
            self.recorder.write("http", **rec)
            self._send(sock, 400, [("Content-Type", "text/plain")], f"{error}\n".encode(), False, info)
            return False

        if target.split("?")[0] == "/ws" and "websocket" in ",".join(hmap.get("upgrade", [])).lower():
            rec["status"] = 101
            self.recorder.write("http", **rec)
            self._websocket(sock, rfile, hmap, info)
            return False
        status, rheaders, payload = self._route(method, target, rec, body, hmap)
        rec["status"] = status
        self.recorder.write("http", **rec)
        if target.split("?")[0] == "/early":  # 103 Early Hints now, the final response after ?delay= seconds
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            delay = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get("delay", ["1"])[0]
            time.sleep(min(float(delay), 10.0) if delay.replace(".", "", 1).isdigit() else 1.0)
        self._send(sock, status, rheaders, payload, keep_alive, info, head=(method == "HEAD"))
        return keep_alive

    def _websocket(self, sock: socket.socket, rfile: Any, hmap: dict[str, list[str]], info: dict) -> None:
        """`/ws`: a WebSocket echo (RFC 6455). Every message is recorded (`kind: ws`) and sent back."""
        key = (hmap.get("sec-websocket-key") or [""])[0].strip()
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                return
            opcode, masked, length = head[0] & 0x0F, head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", rfile.read(8))[0]
            if length > BODY_LIMIT:
                return
            mask = rfile.read(4) if masked else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(length)))
            if opcode == 0x8:  # close
                sock.sendall(b"\x88\x00")
                return
            if opcode == 0x9:  # ping
                sock.sendall(bytes([0x8A, len(data)]) + data)
                continue
            text, enc = encode_bytes(data)
            self.recorder.write("ws", **info, data=text, data_encoding=enc, data_len=len(data))
            size = len(data)
            header = bytes([0x80 | opcode])
            header += bytes([size]) if size < 126 else (b"\x7e" + struct.pack(">H", size) if size < 65536
                                                        else b"\x7f" + struct.pack(">Q", size))
            sock.sendall(header + data)

    @staticmethod
    def _read_headers(rfile: Any) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if not line:
                raise _BadRequest(400, "connection closed in headers")
            if len(line) > MAX_LINE:
                raise _BadRequest(431, "header line too long")
            if line in (b"\r\n", b"\n"):
                return headers
            if len(headers) >= MAX_HEADERS:
                raise _BadRequest(431, "too many headers")
            text = line.rstrip(b"\r\n").decode("latin-1")
            if text[:1] in (" ", "\t") and headers:  # obsolete line folding
                k, v = headers[-1]
                headers[-1] = (k, v + " " + text.strip())
                continue
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"malformed header line: {text[:100]!r}")
            headers.append((name, value.strip()))

    @staticmethod
    def _read_body(sock: socket.socket, rfile: Any, hmap: dict[str, list[str]], version: str) -> tuple[bytes, int]:
        te = ",".join(hmap.get("transfer-encoding", [])).lower()
        cls = hmap.get("content-length", [])
        if te and cls:
            raise _BadRequest(400, "both Transfer-Encoding and Content-Length")
        chunked = False
        length = 0
        if te:
            if te.replace(" ", "").split(",")[-1] != "chunked":
                raise _BadRequest(501, f"unsupported transfer-encoding {te!r}")
            chunked = True
        elif cls:
            vals = {v.strip() for c in cls for v in c.split(",")}
            if len(vals) != 1 or not next(iter(vals)).isdigit():
                raise _BadRequest(400, f"bad content-length {cls!r}")
            length = int(next(iter(vals)))
        if not chunked and length == 0:
            return b"", 0
        expect = (hmap.get("expect") or [""])[0].lower()
        if expect == "100-continue" and version == "HTTP/1.1":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        kept = bytearray()
        total = 0

        def take(n: int) -> None:
            nonlocal total
            while n > 0:
                try:
                    chunk = rfile.read(min(n, 65536))
                except OSError:  # reset, or TLS cut without close_notify: record what did arrive
                    chunk = b""
                if not chunk:
                    raise _BadRequest(400, "connection closed in body", total)
                n -= len(chunk)
                total += len(chunk)
                room = BODY_LIMIT - len(kept)
                if room > 0:
                    kept.extend(chunk[:room])

        if not chunked:
            take(length)
            return bytes(kept), total
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if not line:
                raise _BadRequest(400, "connection closed in chunked body")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400, f"bad chunk size {size_text[:40]!r}") from None
            if size < 0:
                raise _BadRequest(400, "bad chunk size")
            if size == 0:
                while True:  # trailers
                    t = rfile.readline(MAX_LINE + 1)
                    if not t or t in (b"\r\n", b"\n"):
                        break
                return bytes(kept), total
            take(size)
            if rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequest(400, "missing CRLF after chunk")

    def _route(
        self,
        method: str,
        target: str,
        rec: dict[str, Any],
        body: bytes,
        hmap: dict[str, list[str]],
    ) -> tuple[int, list[tuple[str, str]], bytes | int]:
        """(status, headers, body bytes or a byte count for /bytes)."""
        parsed = urllib.parse.urlsplit(target)
        path = parsed.path or "/"
        if target.startswith("/"):  # origin-form: urlsplit would take //x as netloc
            path, _, query = target.partition("?")
        else:
            query = parsed.query
        text_plain = [("Content-Type", "text/plain; charset=utf-8")]
        js = [("Content-Type", "application/json")]

        if path == "/echo":
            out = {
                "method": method,
                "path": target,
                "version": rec["version"],
                "headers": rec["headers"],
                "body": rec["body"],
                "body_encoding": rec["body_encoding"],
                "body_len": rec["body_len"],
                "tls": rec["tls"],
                "sni": rec["sni"],
                "local_addr": rec["local_addr"],
                "local_port": rec["local_port"],
                "peer": rec["peer"],
            }
            pad = urllib.parse.parse_qs(query).get("pad", ["0"])[0]
            if pad.isdigit():  # ?pad=N: N bytes of padding before the echo (a large response)
                out = {"pad": "." * min(int(pad), 64 << 20), **out}
            return 200, js, (json.dumps(out) + "\n").encode()
        if path.startswith("/status/"):
            code_text = path[len("/status/"):]
            if code_text.isdigit() and 100 <= int(code_text) <= 999:
                code = int(code_text)
                if code < 200:  # informational codes can't end a request
                    return 400, text_plain, b"informational status not supported\n"
                payload = b"" if code in (204, 304) else f"status {code}\n".encode()
                return code, text_plain, payload
            return 400, text_plain, b"bad status code\n"
        if path == "/redirect":
            to = urllib.parse.parse_qs(query).get("to")
            if not to:
                return 400, text_plain, b"missing ?to=\n"
            return 302, text_plain + [("Location", to[0])], f"redirecting to {to[0]}\n".encode()
        if path.startswith("/bytes/") and method in ("GET", "HEAD"):
            n = _parse_size(path[len("/bytes/"):])
            if n is None:
                return 400, text_plain, b"bad byte count\n"
            return 200, [("Content-Type", "application/octet-stream")], n
        if method not in ("GET", "HEAD"):
            return 200, js, (json.dumps({"received": rec["body_len"]}) + "\n").encode()
        host = rec["host"] or rec["sni"] or rec["local_addr"]
        return 200, text_plain, f"hello from {host}\n".encode()

    @staticmethod
    def _send(
        sock: socket.socket,
        status: int,
        headers: list[tuple[str, str]],
        payload: bytes | int,
        keep_alive: bool,
        info: dict[str, Any],
        head: bool = False,
    ) -> None:
        length = payload if isinstance(payload, int) else len(payload)
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if status not in (204, 304):
            lines.append(f"Content-Length: {length}")
        lines.append("Server: egressgw-lab-origin")
        lines.append(f"X-Lab-Local: {info['local_addr']}:{info['local_port']}")
        if info.get("tls"):
            lines.append(f"X-Lab-SNI: {info.get('sni') or ''}")
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if head or status in (204, 304):
            sock.sendall(head_bytes)
            return
        if isinstance(payload, bytes):
            sock.sendall(head_bytes + payload)
            return
        # streamed pattern body
        remaining = payload
        first = min(remaining, len(_PATTERN))
        sock.sendall(head_bytes + _PATTERN[:first])
        remaining -= first
        view = memoryview(_PATTERN)
        while remaining > 0:
            n = min(remaining, len(_PATTERN))
            sock.sendall(view[:n])
            remaining -= n

    # ---- raw TCP ----------------------------------------------------------------

    def _serve_tcp(self, conn: socket.socket, peer: Any, _arg: Any) -> None:
        local = conn.getsockname()
        banner = b"SSH-2.0-lab\r\n" if local[1] == 22 else b"lab-tcp\n"
        conn.sendall(banner)
        conn.settimeout(TCP_FIRST_TIMEOUT)
        idle = False
        try:
            data = conn.recv(TCP_FIRST_LIMIT)
        except socket.timeout:
            data, idle = b"", True
        text, enc = encode_bytes(data)
        self.recorder.write(
            "tcp",
            local_addr=local[0],
            local_port=local[1],
            peer=peer[0],
            peer_port=peer[1],
            banner=banner.decode(),
            data=text,
            data_encoding=enc,
            data_len=len(data),
            idle=idle,
        )
        if not data and not idle:
            return  # peer closed without sending
        conn.settimeout(TCP_IDLE_TIMEOUT)
        while data or idle:
            if data:
                conn.sendall(data)
            idle = False
            data = conn.recv(65536)

    # ---- UDP ----------------------------------------------------------------------

    def _serve_udp(self, sock: socket.socket) -> None:
        bound_addr, bound_port = sock.getsockname()[:2]
        anc = socket.CMSG_SPACE(12)
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, peer = sock.recvmsg(65535, anc)
            except OSError:
                if self._stop.is_set():
                    return
                continue
            local = bound_addr
            for level, ctype, cdata in ancdata:
                if level == socket.IPPROTO_IP and ctype == socket.IP_PKTINFO and len(cdata) >= 12:
                    local = socket.inet_ntoa(cdata[8:12])
            text, enc = encode_bytes(data[:UDP_DATA_LIMIT])
            self.recorder.write(
                "udp",
                local_addr=local,
                local_port=bound_port,
                peer=peer[0],
                peer_port=peer[1],
                data=text,
                data_encoding=enc,
                data_len=len(data),
            )
            if bound_port == 53:
                continue
            try:
                if local != bound_addr and sock.family == socket.AF_INET:
                    pktinfo = struct.pack("@i4s4s", 0, socket.inet_aton(local), b"\0" * 4)
                    sock.sendmsg([data], [(socket.IPPROTO_IP, socket.IP_PKTINFO, pktinfo)], 0, peer)
                else:
                    sock.sendto(data, peer)
            except OSError:
                pass
            except Exception:  # noqa: BLE001 - keep the recorder alive
                log.exception("udp echo to %s", peer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.lab.origin", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON config file")
    ap.add_argument("--ready", help="write this file (JSON) once every listener is bound")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s origin %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = json.loads(Path(args.config).read_text())
    server = OriginServer(config)
    bound = server.start()
    log.info("listening: %s", ", ".join(f"{b['kind']} {b['addr']}:{b['port']}" for b in bound))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.ready:
        write_ready(args.ready, {"pid": os.getpid(), "listeners": bound})
    while not stop.wait(3600):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
