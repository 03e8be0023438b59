"""Detection: exfiltration in what the sandbox sends, before Credentials puts any real value in.

Runs after the policy allowed a request. Headers (cookies one by one), path
and query are scanned on `requestheaders`; the body on `request` when it is
small enough to hold (so `block` answers a clean 403), or as it streams
through `flow.request.stream` when it is larger than `spec.detection.streamBytes`
or of unknown length (bounded memory; a block hit closes both connections
before the bytes holding the value are forwarded). WebSocket messages from the
sandbox are scanned one by one. Fragments are also joined per (session, host,
channel) so a value sent in pieces is found (`gateway.exfil.split`).

What a hit does follows the policy (`spec.detection`): `block` (403 naming the
rule, never the value), `redact` (`[REDACTED:<rule>]` in place; block where the
match cannot be located in the raw bytes), `alert` (log only). Every hit goes
into the flow-log event of its flow (`detections`, `alert: true`).
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from urllib.parse import unquote_to_bytes

from mitmproxy import ctx, http

from gateway.addons.auditor import HttpAudit
from gateway.addons.failclosed import fail_closed, refuse_http
from gateway.addons.refuse import META, close_flow, reason_text, refuse
from gateway.detect import Detector, Hit
from gateway.detect.decode import DecodeLimit
from gateway.detect.entropy import shannon
from gateway.exfil.budget import UploadBudgets
from gateway.exfil.joined import SEP, scan_parts
from gateway.exfil.detectors import DetectionNotReady, SessionDetectors
from gateway.exfil.split import SplitTracker
from gateway.exfil.verdict import (
    HIGH_ENTROPY_BITS,
    HIGH_ENTROPY_RULE,
    Finding,
    action_for,
    allowed_by_policy,
    base_part,
    credentials_handles,
    is_placeholder_text,
    placeholder_in_place,
    safe_part,
    strongest,
)
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.secrets.backends import SecretBackendError

logger = logging.getLogger("egressgw.detection")

ENTROPY_SAMPLE = 64 * 1024
FEED_BYTES = 64 * 1024
# Headers whose values a client sets the same way on every request: not channels a value is split over.
_STANDARD_HEADERS = frozenset({
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "connection", "content-length",
    "content-type", "content-encoding", "transfer-encoding", "te", "upgrade", "expect", "cache-control", "pragma",
    "origin", "referer", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "keep-alive",
    "if-none-match", "if-modified-since", "range",
})
_DETECTORS = "egressgw-detectors"  # flow.metadata: the detectors the head was scanned with, for the body


def _entropy_hit(size: int, bits: float) -> Hit:
    """The gateway's own hit: a large high-entropy body to a host whose rule does not say `uploads: true`."""
    return Hit(HIGH_ENTROPY_RULE, None, "large high-entropy upload to a host not marked for uploads", "body", 0,
               size, "raw", f"{size} bytes, {bits:.2f} bits/byte", None, None)


def _masked(slots: list[tuple[str, bytes]], session) -> list[tuple[str, bytes]]:
    """The head's parts with this session's raw placeholders blanked out (same length: offsets hold).

    A raw placeholder in the head is the Credentials step's business (it substitutes it for an
    approved host and part and refuses it anywhere else), so the engine's hits on it (the value,
    and a credential rule on its key-like shape) would be dismissed anyway, at ~100 µs each on
    every request that carries one. Names are not masked (Credentials does not look there)."""
    phs = [b.placeholder.encode() for b in session.secrets.values()]
    if not phs:
        return slots
    out = []
    for label, data in slots:
        if label != "header-names":
            for ph in phs:
                if ph in data:
                    data = data.replace(ph, b" " * len(ph))
        out.append((label, data))
    return out


def _head_hits(detector: Detector, slots: list[tuple[str, bytes]]) -> list[Hit]:
    """Hits in the request head's parts, one engine call. Hits in header names, or in a header or cookie
    the request repeats (redaction rewrites by name), get no raw span: they can only be refused."""
    counts: dict[str, int] = {}
    for label, _data in slots:
        counts[label] = counts.get(label, 0) + 1
    return [dataclasses.replace(h, raw_span=None)
            if h.raw_span is not None and (h.part == "header-names" or counts.get(base_part(h.part), 1) > 1) else h
            for h in scan_parts(detector, slots)]


def _refuse_ws(self, flow: http.HTTPFlow) -> None:
    if flow.websocket and flow.websocket.messages:
        flow.websocket.messages[-1].drop()


def _across_hits(joined: Detector, fragments: list[tuple[str, bytes]]) -> list:
    """A known value cut into pieces sent in several fields of ONE request (`X-A: <first half>`,
    `X-B: <second half>`): the fields the sandbox chose (query values, custom headers, cookies,
    path segments) joined in the order sent, and in reverse order, scanned for known values only
    (one engine call: the two joins are separated by `SEP`, which no encoded run crosses). Only a
    hit that spans two fields counts (one inside a field was found by the head scan); it has no
    place to redact, so it can only be refused. Pieces shuffled into any other order are not found
    (docs/detection.md)."""
    if not joined.values or len(fragments) < 2:
        return []
    values = [data for _, data in fragments]
    forward = b"".join(values)
    bounds, pos = [], 0
    for v in values[:-1]:  # field borders in the forward join, then in the reverse join after SEP
        pos += len(v)
        bounds.append(pos)
    pos = len(forward) + len(SEP)
    for v in values[:0:-1]:
        pos += len(v)
        bounds.append(pos)
    try:
        hits = joined.scan(forward + SEP + b"".join(reversed(values)), "split:request")
    except DecodeLimit as e:
        hits = e.hits
    crossing = []
    for h in hits:
        start, end = h.raw_span or (h.offset, h.offset + h.length)
        if any(start < b < end for b in bounds):
            crossing.append(dataclasses.replace(h, raw_span=None))
    return crossing


class Detection:
    def __init__(self, registry, store, audit, *, splits: SplitTracker | None = None,
                 budgets: UploadBudgets | None = None, detectors: SessionDetectors | None = None):
        self.registry = registry
        self.audit = audit
        self.detectors = detectors if detectors is not None else SessionDetectors(store, registry.holds)
        self.splits = splits or SplitTracker()
        self.budgets = budgets or UploadBudgets()
        registry.subscribe(self._session_changed)

    # -- the engine, per session (gateway/exfil/detectors.py) ------------------------------------
    def _session_changed(self, what: str, session) -> None:
        if what == "deleted":
            self.detectors.forget(session.id)
            self.splits.forget(session.id)
            self.budgets.forget(session.id)
        elif what in ("created", "policy-replaced", "canaries-added"):
            self.detectors.prepare(session)  # compiled before its first request, off the event loop

    def running(self) -> None:
        """Compile the built-in rules once the proxy is up, not on some sandbox's first request; then,
        in the compile thread, the detectors of the sessions restored from the store."""
        self.detectors.warm()
        for session in self.registry.list():
            self.detectors.prepare(session)

    async def _detectors(self, session) -> tuple[Detector, Detector]:
        """(full detector: rules + known values, values-only detector for joined fragments)."""
        return await self.detectors.of(session)

    # -- judging --------------------------------------------------------------------------------
    def _judge(self, hits, info: dict, data_of, *, body_streamed: bool = False) -> list[Finding]:
        """The hits that count, each with its action. `data_of(part)` gives the scanned bytes of a part."""
        session, host = info["session"], info["host"]
        policy = session.policy
        placeholders = [h for h in hits if (h.label or "").startswith("placeholder:")]
        out = []
        for hit in hits:
            data = data_of(base_part(hit.part))
            if hit.label is None:
                if allowed_by_policy(hit, policy.detection, host, data):
                    continue
                if is_placeholder_text(hit, data, placeholders):
                    continue  # a placeholder shaped like a real key: Credentials decides about it
            elif hit.label.startswith("placeholder:"):
                if credentials_handles(hit, data, session, body_streamed=body_streamed):
                    continue
                if body_streamed and base_part(hit.part) == "body" and \
                        placeholder_in_place(hit, session, host, "body"):
                    continue
            elif allowed_by_policy(hit, policy.detection, host, data):
                continue
            out.append(Finding(hit, action_for(hit.rule, hit.action, policy.detection, policy.mode)))
        return out

    def _note(self, info: dict, findings: list[Finding]) -> None:
        records = info.setdefault("detections", [])
        room = events.MAX_DETECTIONS - len(records)
        records.extend(f.record(self._suspicious(info)) for f in findings[:max(0, room)])
        info["alert"] = True

    def _suspicious(self, info: dict):
        """Whether a sandbox-chosen name (header, cookie, form field, file name) holds something to hide."""
        entry = self.detectors.cached(info["session"].id)

        def suspicious(name: str) -> bool:
            try:
                return entry is None or bool(entry[0].scan(name.encode("utf-8", "replace"), "name"))
            except DecodeLimit:
                return True

        return suspicious

    def _block(self, flow: http.HTTPFlow, info: dict, findings: list[Finding], reason: str = "exfiltration") -> None:
        acting = [f for f in findings if f.action in ("block", "redact")] or findings
        first = next((f for f in acting if f.hit.label), acting[0]).hit  # a known value names itself best
        where = safe_part(base_part(first.part), self._suspicious(info))
        what = f"{first.rule}" + (f" ({first.label} in {where})" if first.label else f" (in {where})")
        refuse(flow, reason, info["host"], secret=what, keep_alive=True)

    def _decide(self, flow: http.HTTPFlow, info: dict, findings: list[Finding]) -> str | None:
        """Apply the policy's verdict: None (go on), "redact" (caller rewrites), or "block" (refused)."""
        if not findings:
            return None
        verdict = strongest(findings)
        if verdict == "redact" and any(f.hit.raw_span is None for f in findings if f.action == "redact"):
            verdict = "block"  # a match that cannot be located in the raw bytes cannot be redacted: refuse
        if verdict == "block":
            findings = [Finding(f.hit, "block" if f.action == "redact" else f.action) for f in findings]
        self._note(info, findings)
        if verdict == "alert":
            if info["session"].policy.mode == "report":
                info.update(decision="report", reason="exfiltration")
            return None
        if verdict == "block":
            self._block(flow, info, findings)
            return "block"
        info["reason"] = "exfiltration-redacted"
        return "redact"

    # -- headers, path, query -------------------------------------------------------------------
    @fail_closed(refuse_http)
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if flow.response or info is None or info.get("decision") not in ("allow", "report"):
            return
        session = info["session"]
        detection = session.policy.detection
        if not detection.enabled:
            return
        try:
            full, joined = await self._detectors(session)
        except SecretBackendError as e:
            logger.warning("%s", e)
            info["detail"] = str(e)
            return refuse(flow, "secret-unavailable", info["host"], status=502, secret=e.secret)
        except DetectionNotReady as e:
            logger.warning("%s; request refused", e)
            return refuse(flow, "detection-not-ready", info["host"], status=503, keep_alive=True)
        flow.metadata[_DETECTORS] = (full, joined)
        req, host = flow.request, info["host"]
        rule = session.policy.rule_named(info.get("rule"))
        uploads = bool(rule and rule.uploads)
        path, sep, query = req.data.path.partition(b"?")
        slots: list[tuple[str, bytes]] = [("path", path)]
        if sep:
            slots.append(("query", query))
        names = []  # header and cookie names are the sandbox's choice too
        length: str | None = None  # the first Content-Length (as mitmproxy's headers.get gives it)
        chunked = False
        for name, value in req.headers.fields:
            lname = name.decode("latin-1").lower()
            names.append(name)
            if lname == "content-length" and length is None:
                length = value.decode("latin-1")
            elif lname == "transfer-encoding":
                chunked = True
            if lname == "cookie":
                for pair in value.split(b";"):
                    cname, _, cvalue = pair.strip().partition(b"=")
                    names.append(cname)
                    if cvalue:
                        slots.append((f"cookie:{cname.decode('latin-1')}", cvalue))
            elif lname == "content-length" and value.isdigit():
                continue  # digits only: checked by mitmproxy, nothing to hide in
            else:
                slots.append((f"header:{lname}", value))
        slots.append(("header-names", b"\n".join(names)))
        # Budget: a declared length that cannot fit is refused before a byte of the body is read.
        budget = detection.upload_budget
        if budget and not uploads and length and length.isdigit():
            used = self.budgets.used(session.id, host, budget.window_seconds)
            if used + int(length) + len(req.data.path) > budget.bytes:
                return self._over_budget(flow, info)
        # One engine call for the whole head (the cost is per call more than per byte).
        hits = _head_hits(full, _masked(slots, session))
        fragments = self._fragments(path, query, slots)
        hits.extend(self._joined_hits(joined, session, host, fragments, detection.split_window_seconds))
        hits.extend(_across_hits(joined, fragments))
        by_part: dict[str, bytes] = {}
        for part, data in (slots if hits else ()):
            by_part.setdefault(part, data)
        findings = self._judge(hits, info, by_part.get) if hits else []
        in_path = [f.hit for f in findings if base_part(f.hit.part) == "path"]
        if in_path or any(base_part(f.hit.part) == "query" for f in findings):
            # The log shows the path and the query's names: never with a value in them.
            shown = self._redacted(full, path, in_path) if in_path else path
            suspicious = self._suspicious(info)
            names = [unquote_to_bytes(p.partition(b"=")[0]).decode("latin-1") for p in query.split(b"&") if p]
            names = ["?" if len(n) > 48 or suspicious(n) else n for n in names]
            info["path"] = shown.decode("latin-1") + ("?" + "&".join(f"{n}=" for n in names) if sep else "")
        verdict = self._decide(flow, info, findings)
        if verdict == "block":
            return
        if verdict == "redact":
            self._redact_head(flow, full, [f for f in findings if f.action == "redact"])
        if self._should_stream(req.method, length, chunked, detection):
            self._start_stream(flow, info, full, uploads)

    @staticmethod
    def _fragments(path: bytes, query: bytes, slots) -> list[tuple[str, bytes]]:
        frags = [(f"path:{i}", seg) for i, seg in enumerate(path.split(b"/")) if seg]
        for pair in query.split(b"&"):
            name, eq, value = pair.partition(b"=")
            if eq and value:
                frags.append((f"query:{unquote_to_bytes(name).decode('latin-1')}", value))
        frags += [(part, data) for part, data in slots
                  if part.startswith("cookie:") or (part.startswith("header:") and part[7:] not in _STANDARD_HEADERS)]
        return frags

    def _joined_hits(self, joined: Detector, session, host: str, fragments, window: int) -> list:
        out = []
        if not joined.values:
            return out
        pieces = self.splits.feed(session.id, host, fragments, window, joined.overlap)
        if not pieces:
            return out
        tails = {f"split:{j.channel}": j.tail_len for j in pieces}
        try:
            hits = scan_parts(joined, [(f"split:{j.channel}", j.data) for j in pieces])
        except DecodeLimit as e:
            hits = e.hits
        for hit in hits:
            tail_len = tails.get(base_part(hit.part), 0)
            if hit.offset < tail_len < hit.offset + hit.length:  # begins earlier, ends in this request
                # Its beginning went out with an earlier request: it cannot be redacted, only refused.
                out.append(dataclasses.replace(hit, offset=hit.offset - tail_len, raw_span=None))
        return out

    @staticmethod
    def _redacted(detector: Detector, data: bytes, hits) -> bytes:
        located = [h for h in hits if h.raw_span is not None]
        if len(located) < len(hits):
            return b"/[REDACTED:" + hits[0].rule.encode() + b"]"
        return detector.redact(data, located)

    @staticmethod
    def _redact_head(flow: http.HTTPFlow, detector: Detector, findings: list[Finding]) -> None:
        req = flow.request
        parts = {base_part(f.hit.part) for f in findings}
        path, sep, query = req.data.path.partition(b"?")
        if "path" in parts:
            path = detector.redact(path, [f.hit for f in findings if base_part(f.hit.part) == "path"])
        if "query" in parts:
            query = detector.redact(query, [f.hit for f in findings if base_part(f.hit.part) == "query"])
        req.data.path = path + sep + query
        if any(p.startswith(("header:", "cookie:")) for p in parts):
            fields = []
            for name, value in req.headers.fields:
                lname = name.decode("latin-1").lower()
                if lname == "cookie":
                    pairs = []
                    for pair in value.split(b";"):
                        cname, eq, cvalue = pair.strip().partition(b"=")
                        mine = [f.hit for f in findings
                                if base_part(f.hit.part) == f"cookie:{cname.decode('latin-1')}"]
                        pairs.append(cname + eq + (detector.redact(cvalue, mine) if mine else cvalue))
                    value = b"; ".join(pairs)
                else:
                    mine = [f.hit for f in findings if base_part(f.hit.part) == f"header:{lname}"]
                    if mine:
                        value = detector.redact(value, mine)
                fields.append((name, value))
            req.headers.fields = tuple(fields)

    def _over_budget(self, flow: http.HTTPFlow, info: dict) -> None:
        info["alert"] = True
        if info["session"].policy.mode == "report":
            info.update(decision="report", reason="upload-budget")
            return
        refuse(flow, "upload-budget", info["host"], keep_alive=True)

    # -- bodies ---------------------------------------------------------------------------------
    @staticmethod
    def _should_stream(method: str, length: str | None, chunked: bool, detection) -> bool:
        """`length`: the first Content-Length header; `chunked`: a Transfer-Encoding header is there."""
        if method in ("GET", "HEAD", "OPTIONS", "TRACE") and length is None and not chunked:
            return False
        if length is None or not length.isdigit():
            return True  # unknown length: chunked, or HTTP/2 without a length
        return int(length) > detection.stream_bytes

    @fail_closed(refuse_http)
    async def request(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if flow.response or info is None or info.get("decision") not in ("allow", "report") or info.get("streamed"):
            return
        session = info["session"]
        detection = session.policy.detection
        if not detection.enabled or "host" not in info:
            return
        req, host = flow.request, info["host"]
        body = req.raw_content or b""
        rule = session.policy.rule_named(info.get("rule"))
        uploads = bool(rule and rule.uploads)
        budget = detection.upload_budget
        if budget and not uploads and not self.budgets.charge(
                session.id, host, len(body) + len(req.data.path), budget.bytes, budget.window_seconds):
            return self._over_budget(flow, info)
        if not body:
            return
        # The detectors the head was scanned with (the same values: no second look-up per request).
        full, joined = flow.metadata.pop(_DETECTORS, None) or await self._detectors(session)
        ctype, cenc = req.headers.get("content-type"), req.headers.get("content-encoding")
        try:
            hits = full.scan(body, "body", content_type=ctype, content_encoding=cenc)
        except DecodeLimit as e:
            info["detail"] = f"body not inspected: {e.reason}"
            return refuse(flow, "body-uninspectable", host, keep_alive=True)
        hits.extend(self._joined_hits(joined, session, host, [("body", body)], detection.split_window_seconds))
        if not uploads and len(body) >= detection.high_entropy_bytes:
            sample = self._sample(body, cenc)
            bits = shannon(sample) if sample and len(sample) >= min(ENTROPY_SAMPLE, detection.high_entropy_bytes) else 0
            if bits >= HIGH_ENTROPY_BITS:
                hits.append(_entropy_hit(len(body), bits))
        findings = self._judge(hits, info, lambda part: body if part == "body" else None)
        verdict = self._decide(flow, info, findings)
        if verdict == "redact":
            self._redact_body(flow, full, [f for f in findings if f.action == "redact"], body, ctype, cenc)

    def _redact_body(self, flow: http.HTTPFlow, detector: Detector, findings, body: bytes, ctype, cenc) -> None:
        req = flow.request
        if not cenc or cenc.strip().lower() == "identity":
            req.content = detector.redact(body, [f.hit for f in findings])
            return
        # Inside a content coding: redact the decoded body, and let mitmproxy encode it again.
        decoded = req.get_content(strict=False) or b""
        again = self._judge(detector.scan(decoded, "body", content_type=ctype), flow.metadata[META],
                            lambda part: decoded)
        again = [f for f in again if f.action == "redact"]
        if not again or any(f.hit.raw_span is None for f in again):
            return self._block(flow, flow.metadata[META], findings)
        req.set_content(detector.redact(decoded, [f.hit for f in again]))

    @staticmethod
    def _sample(body: bytes, cenc: str | None) -> bytes | None:
        """Up to 64 KiB of the body after its content coding (None: a coding we do not sample)."""
        coding = (cenc or "identity").strip().lower()
        if coding == "identity":
            return body[:ENTROPY_SAMPLE]
        if coding in ("gzip", "x-gzip", "deflate"):
            try:
                wbits = 31 if "gzip" in coding else 15
                try:
                    return zlib.decompressobj(wbits).decompress(body, ENTROPY_SAMPLE)
                except zlib.error:
                    return zlib.decompressobj(-15).decompress(body, ENTROPY_SAMPLE)
            except zlib.error:
                return None
        return None

    # -- streamed bodies ------------------------------------------------------------------------
    def _start_stream(self, flow: http.HTTPFlow, info: dict, detector: Detector, uploads: bool) -> None:
        req = flow.request
        scan = detector.stream("body", content_type=req.headers.get("content-type"),
                               content_encoding=req.headers.get("content-encoding"))
        flow.request.stream = _BodyStream(self, flow, info, scan, uploads)

    def _cut(self, flow: http.HTTPFlow, info: dict, reason: str) -> None:
        """Refuse a body already under way: log it, then close both sides before another byte goes out."""
        info.update(decision="deny", reason=reason, logged=True)
        try:
            self.audit.emit(HttpAudit._event(flow, info))
        except LogWriteError:
            pass  # the flow is being killed anyway
        close_flow(flow)

    # -- WebSocket ------------------------------------------------------------------------------
    @fail_closed(_refuse_ws)
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if info is None or info.get("session") is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        session = info["session"]
        if not message.from_client or not session.policy.detection.enabled:
            return
        try:
            full, joined = await self._detectors(session)
        except DetectionNotReady as e:
            logger.warning("%s; websocket message dropped", e)
            message.drop()
            return
        content = message.content
        hits = full.scan(content, "websocket")
        hits.extend(self._joined_hits(joined, session, info["host"], [("websocket", content)],
                                      session.policy.detection.split_window_seconds))
        findings = self._judge(hits, {**info}, lambda part: content)
        if not findings:
            return
        record = {"session": session, "host": info["host"], "port": info.get("port"), "rule": info.get("rule"),
                  "decision": info.get("decision", "allow"), "reason": info.get("reason")}
        verdict = strongest(findings)
        if verdict == "redact" and all(f.hit.raw_span is not None for f in findings if f.action == "redact") \
                and not any(f.action == "block" for f in findings):
            message.content = full.redact(content, [f.hit for f in findings if f.action == "redact"])
            record["reason"] = "exfiltration-redacted"
        elif verdict in ("block", "redact"):
            findings = [Finding(f.hit, "block" if f.action == "redact" else f.action) for f in findings]
            message.drop()
            first = findings[0].hit
            notice = (f"egressgw refused this message: {reason_text('exfiltration', first.rule)}"
                      f" ({info['host']})")
            try:
                ctx.master.commands.call("inject.websocket", flow, True, notice.encode(), True)
            except Exception:  # noqa: BLE001 - no live connection (tests): the drop is what matters
                logger.debug("could not tell the sandbox about a dropped message")
            record.update(decision="deny", reason="exfiltration")
        elif session.policy.mode == "report":
            record.update(decision="report", reason="exfiltration")
        self._note(record, findings)
        try:
            self.audit.emit(events.make_event(
                events.HTTP, session=session.id, dest_host=info.get("host"), dest_port=info.get("port"),
                method="WEBSOCKET", client=events.address(flow.client_conn.peername),
                decision=record["decision"], rule=record["rule"], reason=record["reason"] or "allowed",
                detections=record["detections"], alert=True, detail="websocket message from the sandbox"))
        except LogWriteError:
            message.drop()


class _BodyStream:
    """`flow.request.stream`: each chunk through the engine's StreamScan; forwards only what is safe."""

    def __init__(self, addon: Detection, flow: http.HTTPFlow, info: dict, scan, uploads: bool):
        self.addon, self.flow, self.info, self.scan, self.uploads = addon, flow, info, scan, uploads
        self.dead = False
        self.sent = self.seen = 0
        self.sample = bytearray()
        self.pending = bytearray()  # received, not yet scanned (< FEED_BYTES)
        self.sampling = not uploads and (flow.request.headers.get("content-encoding") or "identity").strip().lower() \
            in ("identity", "")
        info["streamed"] = True

    def __call__(self, chunk: bytes):
        if self.dead:
            return b""
        try:
            return self._step(chunk)
        except Exception:  # noqa: BLE001 - fail closed: a scanner that breaks forwards nothing more
            logger.exception("streamed body scan failed; cutting the flow")
            self.dead = True
            self.addon._cut(self.flow, self.info, "body-uninspectable")
            return b""

    def _step(self, chunk: bytes):
        info, detection = self.info, self.info["session"].policy.detection
        session, host = info["session"], info["host"]
        budget = detection.upload_budget
        if budget and not self.uploads and chunk and not self.addon.budgets.charge(
                session.id, host, len(chunk), budget.bytes, budget.window_seconds):
            info["alert"] = True
            if session.policy.mode != "report":
                self.dead = True
                self.addon._cut(self.flow, info, "upload-budget")
                return b""
            info.update(decision="report", reason="upload-budget")
        # The engine's cost is per call as much as per byte: feed it at least FEED_BYTES at a time.
        self.pending += chunk
        if chunk and len(self.pending) < FEED_BYTES:
            return b""
        data, self.pending = bytes(self.pending), bytearray()
        try:
            if data:
                safe, hits = self.scan.feed(data)
            else:
                safe, hits = b"", []
            if not chunk:
                rest, more = self.scan.finish()
                safe, hits = safe + rest, hits + more
        except DecodeLimit as e:
            info["detail"] = f"body not inspected: {e.reason}"
            self.dead = True
            self.addon._cut(self.flow, info, "body-uninspectable")
            return b""
        self.seen += len(data)
        if self.sampling:
            if len(self.sample) < ENTROPY_SAMPLE:
                self.sample += data[:ENTROPY_SAMPLE - len(self.sample)]
            if self.seen >= detection.high_entropy_bytes:
                self.sampling = False
                bits = shannon(bytes(self.sample))
                if bits >= HIGH_ENTROPY_BITS:
                    hits = [*hits, _entropy_hit(self.seen, bits)]
        findings = self.addon._judge(hits, info, lambda part: None, body_streamed=True)
        if findings:
            # In a stream nothing can be rewritten (the length is already announced): redact blocks.
            findings = [Finding(f.hit, "block" if f.action == "redact" else f.action) for f in findings]
            self.addon._note(info, findings)
            if any(f.action == "block" for f in findings):
                self.dead = True
                self.addon._cut(self.flow, info, "exfiltration")
                return b""
            if session.policy.mode == "report":
                info.update(decision="report", reason="exfiltration")
        self.sent += len(safe)
        info["bytes_out"] = self.sent
        return safe
