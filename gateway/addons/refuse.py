"""How the gateway says no: one place, one wording.

HTTP gets a 403 (407 for missing proxy credentials) with a one-line reason
that names the refused host and nothing of the policy's internals.
"""

from __future__ import annotations

from mitmproxy import ctx, http

from gateway.log.events import clean

_TEXT = {
    "host-not-allowed": "host not allowed",
    "port-not-allowed": "port not allowed",
    "method-not-allowed": "method not allowed",
    "path-not-allowed": "path not allowed",
    "ip-literal-not-allowed": "IP address destinations not allowed",
    "plain-http-not-allowed": "plain HTTP not allowed, use HTTPS",
    "tcp-not-allowed": "protocol not allowed",
    "no-session": "no session for this client",
    "sni-host-mismatch": "Host does not match the TLS server name",
    "address-not-allowed": "destination address not allowed",
    "dns-failure": "destination name could not be resolved",
    "bad-request": "malformed request",
    "proxy-auth-required": "proxy credentials required",
    "log-unavailable": "flow log unavailable",
    "session-store-unavailable": "session store unavailable, try again",
    "placeholder-not-approved": "credential {secret} is not approved for this host",
    "placeholder-foreign": "credential placeholder of another session",
    "placeholder-wrong-part": "credential {secret} is not allowed in this part of the request",
    "placeholder-partial": "partial placeholder of credential {secret}",
    "placeholder-encoded": "encoded placeholder of credential {secret}",
    "secret-unavailable": "credential {secret} is unavailable right now",
    "exfiltration": "possible exfiltration, detection rule {secret}",
    "upload-budget": "upload budget for this host exhausted",
    "body-uninspectable": "request body could not be inspected",
    "detection-not-ready": "exfiltration detection not ready, try again",
}

META = "egressgw"


def reason_text(reason: str, secret: str | None = None) -> str:
    return _TEXT.get(reason, reason).replace("{secret}", secret or "").replace("  ", " ")


def refuse(flow: http.HTTPFlow, reason: str, host: str | None, *, status: int = 403, secret: str | None = None,
           keep_alive: bool = False, **meta) -> None:
    """Answer the sandbox with a refusal and record why in the flow's metadata.

    `secret` names a credential (never its value) when the refusal is about one. `keep_alive`: the
    client may go on using the connection (a refused request on an allowed connection)."""
    target = f" ({clean(host, 253)})" if host else ""
    body = f"egressgw refused this request: {reason_text(reason, secret)}{target}\n"
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if not keep_alive:
        headers["Connection"] = "close"
    if status == 407:
        headers["Proxy-Authenticate"] = 'Basic realm="egressgw"'
    flow.response = http.Response.make(status, body, headers)
    info = flow.metadata.setdefault(META, {})
    info.update(meta, decision="deny", reason=reason)
    if host:
        info.setdefault("host", host)


def connection_handler(client_id: str):
    """mitmproxy's handler of a client connection, or None (not running, or already gone)."""
    proxy = ctx.master.addons.get("proxyserver") if getattr(ctx, "master", None) else None
    return proxy.connections.get(client_id) if proxy else None


def close_client_socket(client, conn=None) -> None:
    """Close the sandbox's socket now (what is already written is flushed first), or with `conn`, that
    connection of the sandbox's handler (an origin's).

    mitmproxy's CloseConnection only cancels the connection's reader task. Measured: when the sandbox
    kept sending, that reader sometimes went on waiting with 300 KB unread and the socket open, the
    attacker's connection alive until the idle timeout (tests/adversarial/test_resources.py, after
    other attacks); a TLS origin's socket went on being read to its end (16 MB of response head
    after the guard's stop). A closed writer ends the reader too."""
    handler = connection_handler(client.id)
    io = handler.transports.get(conn if conn is not None else client) if handler is not None else None
    if io is not None and io.writer is not None and not io.writer.is_closing():
        io.writer.close()


def close_flow(flow: http.HTTPFlow) -> None:
    """Close both sides of a flow under way (mitmproxy idiom: through the connection handler).

    The origin's socket is closed at once, not only marked closed: mitmproxy still works through
    what it already read from the sandbox, and for a streamed body that can include the body's
    end, which it forwards (a killed flow's end of message is not checked). To a chunked HTTP/1
    origin that is the zero-size chunk, so a body cut mid-way used to arrive as a complete,
    shorter request (adversarial finding: test_chunked_body_over_the_limit_is_cut, 1 run in 8).
    A closed writer takes no more bytes."""
    handler = connection_handler(flow.client_conn.id)
    if handler is not None:
        for conn in (flow.server_conn, flow.client_conn):
            if conn in handler.transports:
                handler.close_connection(conn)
                writer = handler.transports[conn].writer if conn is flow.server_conn else None
                if writer is not None and not writer.is_closing():
                    writer.close()
    if flow.killable:
        flow.kill()
