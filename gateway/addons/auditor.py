"""Audit of HTTP flows: one event when a request is answered or fails.

Refusals set by earlier steps arrive here too (as the 403 they got), so every
HTTP decision is logged in one place, with bytes, status and timing.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy.mode_specs import RegularMode

from gateway import metrics
from gateway.addons.refuse import META
from gateway.log import events
from gateway.log.writer import LogWriteError


def _announced(resp) -> int | None:
    """A streamed response's Content-Length, if it has one."""
    length = resp.headers.get("content-length") if resp is not None else None
    return int(length) if length is not None and length.strip().isdigit() else None


class HttpAudit:
    def __init__(self, audit):
        self.audit = audit

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A body that streams (gateway/addons/credentials.py) is logged before its first byte leaves:
        no record, no answer, for streamed responses too (`bytes_in` is then the announced length)."""
        if flow.response is not None and flow.response.stream:
            self.response(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        """After the body is read, before the sandbox sees the answer (unless the body streams)."""
        info = flow.metadata.get(META)
        if info is None or info.get("logged") or flow.request.method == "CONNECT":
            return
        try:
            self.audit.emit(self._event(flow, info))
        except LogWriteError:
            flow.kill()  # no record, no answer
            return
        info["logged"] = True
        if info.get("dest_ip") and flow.response.timestamp_start and flow.request.timestamp_end:
            metrics.UPSTREAM_LATENCY.labels("https" if flow.client_conn.tls else "http").observe(
                max(0.0, flow.response.timestamp_start - flow.request.timestamp_end))

    def error(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if info is None or info.get("logged"):
            return
        if flow.request.method == "CONNECT" and isinstance(flow.client_conn.proxy_mode, RegularMode):
            return  # an explicit proxy's CONNECT is logged by the policy (httppolicy.http_connect)
        info.setdefault("reason", "upstream-error")
        try:
            self.audit.emit(self._event(flow, info, error=info.get("detail") or (flow.error.msg if flow.error else None)))
        except LogWriteError:
            pass
        info["logged"] = True

    @staticmethod
    def _event(flow: http.HTTPFlow, info: dict, error: str | None = None) -> dict:
        req, resp = flow.request, flow.response
        session = info.get("session")
        host = info.get("host")
        port = info.get("port", req.port)
        scheme = "https" if flow.client_conn.tls else "http"
        default = 443 if scheme == "https" else 80
        authority = host if port == default else f"{host}:{port}"
        return events.make_event(
            events.HTTP,
            session=session.id if session else None,
            client=events.address(flow.client_conn.peername),
            dest_host=host, dest_ip=info.get("dest_ip"), dest_port=port,
            sni=flow.client_conn.sni, method=req.method,
            url=events.strip_query_values(f"{scheme}://{authority}{info.get('path', req.path)}") if host else None,
            status=resp.status_code if resp else None,
            bytes_out=info.get("bytes_out", len(req.raw_content or b"")),
            bytes_in=len(resp.raw_content or b"") if resp and resp.raw_content is not None else _announced(resp),
            decision=info.get("decision", "deny"), rule=info.get("rule"), reason=info.get("reason"),
            duration_ms=round((resp.timestamp_start - req.timestamp_start) * 1000, 3)
            if resp and resp.timestamp_start and req.timestamp_start else None,
            secrets=info.get("secrets"),
            detections=info.get("detections"),
            alert=True if info.get("alert") else None,
            detail=error or info.get("detail"),
        )
