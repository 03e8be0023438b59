"""mitmproxy's DNS name codec, made to survive labels that are not IDNA text.

mitmproxy decodes every label of a DNS name with Python's ``idna`` codec. A
label holding bytes above 0x7F (legal on the wire; DNS tunnels such as iodine
send them on purpose, to test for an 8-bit clean path) makes it call the
message invalid and *close the client connection*. For UDP that means every
later datagram from the same source address and port is dropped without an
answer until the flow times out: one odd query silences a socket's DNS, and
the gateway's own hook (policy, tunnel detection, flow log) never sees it.

`install()` wraps the two functions: such a label is decoded to text with the
offending bytes written ``\\DDD`` (decimal, as in zone files; ``\\`` itself
written ``\\092``), and a name holding ``\\`` is packed back to the very same
bytes. The same holds for an ASCII label that is not valid punycode
(``xn--bc(her-kva``): Python's idna codec raises a UnicodeError that mitmproxy
does not catch at all (it only turns UnicodeDecodeError into a format error),
so the layer crashed; such a label gets its first byte escaped (``\\120n--bc(``),
which keeps it byte-exact and never a valid host name; so does a label that
decodes to text holding a dot (the byte 0x2E inside one label, or punycode of
U+3002), which would otherwise pack back as two labels or not at all, crashing
the layer when the answer is sent (both found by fuzz/dns.py).
The name then reaches `DnsGate` like any other, fails the policy's host name check (``\\`` is not a host name character) and gets NXDOMAIN, logged.
Names that decode today decode exactly as before. Idempotent.

`install()` also outlives mitmproxy_rs's UDP table. The Rust UDP server keeps
each (client, listener) pair for 60 s after its last packet, and mitmproxy's
Python side closes an idle UDP connection after 20 s. A closed pair stays in
the Rust table, and every datagram it then receives is dropped and refreshes the
entry. So a sandbox resolver that reuses a source port 20 to 80 s later gets
no answer, ever: about 1 lookup in 100 timed out after 10 s in the lab (glibc
picks a random port for every lookup). With the Python timeout at
`UDP_IDLE_SECONDS` (75 s), the Rust side forgets the pair first (60 s plus its
5 s sweep), which ends the Python connection, and the next datagram from that
port opens a fresh one (tests/e2e/test_dns_port_reuse.py).

`install()` also gives every query a flow of its own. mitmproxy's DNS layer
keeps a connection's flows by query id and never forgets one, so a second query
with the same id on the same UDP source port (or TCP connection) got the first
query's flow back, answer included: every hook saw a flow already answered and
left it alone, and the client got the old answer to a question nobody decided
or logged. A resolver that reuses a socket hits this by chance (two random ids
in 80 queries collide ~5% of the time: a CI failure of
tests/adversarial/test_limits.py), and a sandbox could do it on purpose to keep
queries out of the flow log and out of its rate limit. Now a query whose id
belongs to a flow that was already answered (or failed) starts a new flow
(tests/unit/test_dnswire.py, tests/e2e/test_dns_port_reuse.py). And an answered
flow is forgotten: mitmproxy kept every one for the life of the connection, so a
resolver that keeps one socket open made the gateway hold each of its queries
(up to 65,536 per socket, one per id) for as long as it kept asking.
"""

from __future__ import annotations

import re
import struct

from mitmproxy import dns as mdns
from mitmproxy.net.dns import domain_names

_ESCAPE = re.compile(r"\\(\d{3})")
_DOT = re.compile("[.\u3002\uff0e\uff61]")  # what the idna codec splits names on
_installed = False
UDP_IDLE_SECONDS = 75  # > mitmproxy_rs's UDP_TIMEOUT (60 s) + its sweep interval (5 s)


def escape_label(raw: bytes) -> str:
    """Presentation form of a label that is not IDNA text (reversible by `unescape_label`)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}" for b in raw)


def _escaped(raw: bytes) -> str:
    """`escape_label`, with at least one byte escaped: the name then packs through `unescape_label`."""
    text = escape_label(raw)
    return text if "\\" in text else f"\\{raw[0]:03d}" + text[1:]


def unescape_label(text: str) -> bytes:
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode("ascii")
        value = int(m.group(1))
        if value > 255:
            raise ValueError(f"escaped byte \\{m.group(1)} is out of range")
        out.append(value)
        pos = m.end()
    out += text[pos:].encode("ascii")
    return bytes(out)


def install() -> None:
    global _installed
    if _installed:
        return
    from mitmproxy.proxy import server

    server.UDP_TIMEOUT = max(server.UDP_TIMEOUT, UDP_IDLE_SECONDS)
    original_unpack = domain_names._unpack_label_into
    original_pack = domain_names.pack

    def _unpack_label_into(labels: list[str], buffer: bytes, offset: int) -> int:
        try:
            used = original_unpack(labels, buffer, offset)
        except (struct.error, UnicodeError):  # UnicodeError: bad punycode, uncaught by mitmproxy
            (size,) = domain_names._LABEL_SIZE.unpack_from(buffer, offset)
            start = offset + domain_names._LABEL_SIZE.size
            if size >= 64 or len(buffer) < start + size:
                raise struct.error(f"unpack encountered a bad label at offset {offset}") from None
            labels.append(_escaped(buffer[start:start + size]))
            return domain_names._LABEL_SIZE.size + size
        if used > 1 and (_DOT.search(labels[-1]) or ("\\" in labels[-1] and not labels[-1].isascii())):
            # a dot inside one label ("a.b" as ONE label, or punycode of U+3002) would pack back as two
            # labels, or fail to pack at all and crash the layer when the answer is sent; so would a
            # backslash (punycode can decode to one): pack would read it as an escape (fuzz finding)
            labels[-1] = _escaped(buffer[offset + 1:offset + used])
        return used

    def pack(name: str) -> bytes:
        if "\\" not in name:
            return original_pack(name)
        buffer = bytearray()
        parts = name.split(".")
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()  # a trailing dot is the root, not an empty label
        for part in parts:
            label = unescape_label(part) if "\\" in part else part.encode("idna")
            if not 0 < len(label) < 64:
                raise ValueError(f"domain name {name!r} has an empty or too long label")
            buffer += domain_names._LABEL_SIZE.pack(len(label)) + label
        buffer += domain_names._LABEL_SIZE.pack(0)
        return bytes(buffer)

    domain_names._unpack_label_into = _unpack_label_into
    domain_names.pack = pack

    # mitmproxy's DNS layer catches only struct.error from DNSMessage.unpack; any other error from a
    # hostile packet (ValueError "contains empty labels", found by fuzzing) would escape the layer
    # and stop that listener. Every parse failure becomes the documented "invalid message" path.
    original_message_unpack = mdns.DNSMessage.unpack.__func__

    def message_unpack(cls, buffer: bytes, timestamp: float | None = None):
        try:
            return original_message_unpack(cls, buffer, timestamp)
        except struct.error:
            raise
        except (ValueError, UnicodeError, IndexError) as e:
            raise struct.error(f"invalid DNS message: {e}") from None

    mdns.DNSMessage.unpack = classmethod(message_unpack)
    _fresh_flow_per_query()
    _installed = True


def _fresh_flow_per_query() -> None:
    from mitmproxy.proxy.layers import dns as dns_layer

    original = dns_layer.DNSLayer.handle_request

    def handle_request(self, flow: mdns.DNSFlow, msg: mdns.DNSMessage):
        if flow.response is not None or flow.error is not None:  # an earlier query's, same id
            flow = mdns.DNSFlow(self.context.client, self.context.server, live=True)
            self.flows[msg.id] = flow
        yield from original(self, flow, msg)
        if (flow.response is not None or flow.error is not None) and self.flows.get(msg.id) is flow:
            del self.flows[msg.id]  # answered: nothing upstream will answer it again

    dns_layer.DNSLayer.handle_request = handle_request
