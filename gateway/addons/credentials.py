"""Credentials: placeholders become real values only on their way to approved hosts.

After the policy allowed a request, every part of it is scanned for any
session's placeholder (headers, Basic auth, path, query, body; URL-decoded
views too). A placeholder is substituted only when it belongs to this
session, the host is approved for that secret, the part is one the secret
allows, and it stands whole and unencoded. Anything else refuses the request
with a 403 that names the secret (never its value) and an alert in the flow
log. Responses are masked: a real value coming back is replaced with its
placeholder before the sandbox sees it.
"""

from __future__ import annotations

import logging
import re

from mitmproxy import ctx, http

from gateway.addons.failclosed import fail_closed, refuse_http
from gateway.addons.refuse import META, close_flow, reason_text, refuse
from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.detect.decode import parse_codings
from gateway.secrets.backends import SecretBackendError, parse_source
from gateway.secrets.response_watch import ResponseWatch, SecretInResponse
from gateway.secrets.model import SIGV4_DERIVED
from gateway.secrets.sigv4 import SigV4Error, parse_authorization, resign
from gateway.secrets.substitute import Hit, decode_basic, encode_basic, masks, views, written

logger = logging.getLogger("egressgw.credentials")

_AUTH_HEADERS = ("authorization", "proxy-authorization")
_JSON_U = re.compile(r"\\u([0-9a-fA-F]{4})")


def _refuse_unstreamed(self, flow: http.HTTPFlow) -> None:
    flow.request.stream = False
    refuse_http(self, flow)


def _content_kind(headers) -> str:
    ctype = headers.get("content-type", "").lower()
    if "json" in ctype:
        return "json"
    if ctype.startswith("application/x-www-form-urlencoded"):
        return "form"
    return "raw"


class Credentials:
    def __init__(self, registry, store, audit):
        self.registry = registry
        self.store = store
        self.audit = audit

    # -- finding --------------------------------------------------------------------------------
    def _scan(self, req: http.Request) -> tuple[list[Hit], list[Hit]]:
        """(hits where the placeholder stands as written, hits visible only once decoded)."""
        index = self.registry.placeholders
        if not len(index):
            return [], []
        raw: list[Hit] = []
        decoded: list[Hit] = []

        def look(text: str, part: str, *, form: bool = False, extra: tuple[str, ...] = ()) -> None:
            plain = index.scan(text, part)
            raw.extend(plain)
            seen = {h.secret.core for h in plain}
            for view in (*views(text, form=form)[1:], *extra):
                decoded.extend(h for h in index.scan(view, part) if h.secret.core not in seen)

        for name, value in req.headers.items(multi=True):
            basic = decode_basic(value) if name.lower() in _AUTH_HEADERS else None
            if basic is not None:
                raw.extend(index.scan(basic, "headers"))  # Basic auth is substituted inside the base64
            look(f"{name}: {value}", "headers")
        path, _, query = req.path.partition("?")
        look(path, "path")
        if query:
            look(query, "query", form=True)
        body = req.get_content(strict=False) if req.raw_content else None
        if body:
            text = body.decode("latin-1")
            kind = _content_kind(req.headers)
            unescaped = (_JSON_U.sub(lambda m: chr(int(m.group(1), 16)), text),) if "\\u" in text else ()
            look(text, "body", form=kind == "form", extra=unescaped)
        return raw, decoded

    # -- hooks ----------------------------------------------------------------------------------
    @fail_closed(_refuse_unstreamed)
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A body that streams (Detection decided so) goes out right after this hook: the headers, path and
        query are handled now; the streamed body is never held, so placeholders in it are not substituted."""
        info = flow.metadata.get(META)
        if flow.request.stream and info is not None:
            await self.request(flow)
            info["credentials_done"] = True
            if flow.response:  # refused: nothing streams (mitmproxy cannot answer and stream at once)
                flow.request.stream = False

    @fail_closed(refuse_http)
    async def request(self, flow: http.HTTPFlow) -> None:
        info = flow.metadata.get(META)
        if flow.response or info is None or info.get("decision") not in ("allow", "report") \
                or info.get("credentials_done"):
            return
        hits, hidden = self._scan(flow.request)
        if not hits and not hidden:
            return
        session, host = info["session"], info["host"]
        info["secrets"] = sorted({f"{h.secret.spec.name}@{h.part}" for h in hits + hidden})
        signing = self._sigv4_target(flow.request, session, hits)
        if signing is not None:
            key_id, parsed = signing
            if not key_id.spec.approved_for(host):
                info["alert"] = True
                return refuse(flow, "placeholder-not-approved", host, secret=key_id.spec.name)
            # The key id and session token placeholders in the headers are the signature's business.
            companions = {key_id.core} | {b.core for n, b in session.secrets.items() if n in SIGV4_DERIVED.values()}
            hits = [h for h in hits if not (h.part == "headers" and h.secret.core in companions)]
        misuse = self._misuse(hits, hidden, session, host)
        if misuse:
            reason, secret, detail = misuse
            info.update(alert=True, detail=detail)
            return refuse(flow, reason, host, secret=secret)
        try:
            values = await self._values(hits)
        except SecretBackendError as e:
            logger.warning("%s", e)
            info["detail"] = str(e)
            return refuse(flow, "secret-unavailable", host, status=502, secret=e.secret)
        bad = [n for n, v in values.items() if any(c in v for c in "\r\n\0")]
        if bad and any(h.part == "headers" for h in hits if h.secret.spec.name in bad):
            info["detail"] = f"secret {bad[0]} holds a line break and cannot go into a header"
            return refuse(flow, "secret-unavailable", host, status=502, secret=bad[0])
        self._substitute(flow.request, hits, values)
        # Mask what was actually put in, whatever the cache does before the answer comes back.
        info["masks"] = [(form, h.secret.placeholder.encode()) for h in hits for form in masks(values[h.secret.spec.name])]
        if signing is not None:
            await self._resign(flow, session, *signing)

    @staticmethod
    def _misuse(hits: list[Hit], hidden: list[Hit], session, host: str) -> tuple[str, str | None, str] | None:
        """(reason, secret name to tell the sandbox, detail for the log) for the first misuse, or None."""
        for hit in hits + hidden:
            secret = hit.secret
            if secret.session_id != session.id:
                # Never name another session's secret to this sandbox; the log says whose it is.
                return "placeholder-foreign", None, f"placeholder of session {secret.session_id}"
            detail = f"secret {secret.spec.name} in {hit.part}"
            if not secret.spec.approved_for(host):
                return "placeholder-not-approved", secret.spec.name, detail
            if hit in hidden:
                return "placeholder-encoded", secret.spec.name, detail
            if hit.partial:
                return "placeholder-partial", secret.spec.name, detail
            if hit.part not in secret.spec.parts:
                return "placeholder-wrong-part", secret.spec.name, detail
        return None

    async def _values(self, hits: list[Hit]) -> dict[str, str]:
        values: dict[str, str] = {}
        for hit in hits:
            spec = hit.secret.spec
            if spec.name not in values:
                values[spec.name] = await self.store.get(spec.name, parse_source(spec.source))
        return values

    @staticmethod
    def _sigv4_target(req: http.Request, session, hits: list[Hit]):
        """(the key-id secret, parsed header) when the request is SigV4-signed with this session's placeholder."""
        for value in req.headers.get_all("authorization"):
            try:
                parsed = parse_authorization(value)
            except SigV4Error:
                continue
            for hit in hits if parsed else ():
                secret = hit.secret
                if secret.session_id == session.id and secret.spec.sigv4 and secret.placeholder == parsed.access_key_id:
                    return secret, parsed
        return None

    async def _resign(self, flow: http.HTTPFlow, session, key_id, parsed) -> None:
        info, req = flow.metadata[META], flow.request
        spec = key_id.spec
        try:
            real = {"id": await self.store.get(spec.name, parse_source(spec.source))}
            for key in ("secretAccessKey", "sessionToken"):
                uri = spec.sigv4_source(key)
                if uri:
                    real[key] = await self.store.get(SIGV4_DERIVED[key], parse_source(uri))
        except SecretBackendError as e:
            info["detail"] = str(e)
            return refuse(flow, "secret-unavailable", info["host"], status=502, secret=e.secret)
        url = f"{'https' if flow.client_conn.tls else 'http'}://{req.host_header}{req.path}"
        try:
            headers = resign(req.method, url, list(req.headers.items(multi=True)), req.raw_content,
                             access_key_id=real["id"], secret_access_key=real["secretAccessKey"],
                             session_token=real.get("sessionToken"), region=parsed.region, service=parsed.service)
        except SigV4Error as e:
            info["detail"] = f"sigv4: {e}"
            return refuse(flow, "bad-request", info["host"], secret=spec.name)
        req.headers.fields = tuple((k.encode(), v.encode()) for k, v in headers)
        info["secrets"] = sorted({*info.get("secrets", ()), f"{spec.name}@sigv4"})

    def _substitute(self, req: http.Request, hits: list[Hit], values: dict[str, str]) -> None:
        secrets = {h.secret.placeholder: h.secret for h in hits}
        parts = {h.part for h in hits}

        def replace(text: str, context: str) -> str:
            for placeholder, secret in secrets.items():
                if placeholder in text:
                    text = text.replace(placeholder, written(values[secret.spec.name], context))
            return text

        if "headers" in parts:
            fields = []
            for name, value in req.headers.items(multi=True):
                basic = decode_basic(value) if name.lower() in _AUTH_HEADERS else None
                if basic is not None and any(p in basic for p in secrets):
                    value = encode_basic(replace(basic, "raw"))
                elif value in secrets:  # the whole value: the secret's format applies
                    secret = secrets[value]
                    value = secret.spec.render(values[secret.spec.name])
                else:
                    value = replace(value, "raw")
                fields.append((name.encode(), value.encode("utf-8", "surrogateescape")))
            req.headers.fields = tuple(fields)
        if "path" in parts or "query" in parts:
            path, sep, query = req.path.partition("?")
            req.path = replace(path, "path") + sep + replace(query, "query")
        if "body" in parts:
            body = req.get_content(strict=False) or b""
            kind = _content_kind(req.headers)
            for placeholder, secret in secrets.items():
                body = body.replace(placeholder.encode(), written(values[secret.spec.name], kind).encode())
            req.set_content(body)  # re-encodes per Content-Encoding and fixes Content-Length

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Sandbox → origin messages: substitute where the secret opted in to `websocket`; origin → sandbox: mask.

        A message with a placeholder that may not be used there is dropped, never forwarded."""
        info = flow.metadata.get(META)
        if info is None or info.get("session") is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client:
            content = message.content
            for form, placeholder in self._mask_pairs(info["session"]):
                content = content.replace(form, placeholder)
            message.content = content
            return
        index = self.registry.placeholders
        text = message.content.decode("latin-1")
        hits = index.scan(text, "websocket")
        seen = {h.secret.core for h in hits}
        hidden = [h for view in views(text)[1:] for h in index.scan(view, "websocket") if h.secret.core not in seen]
        if not hits and not hidden:
            return
        session, host = info["session"], info["host"]
        misuse = self._misuse(hits, hidden, session, host)
        try:
            values = None if misuse else await self._values(hits)
        except SecretBackendError as e:
            misuse = ("secret-unavailable", e.secret, str(e))
        if misuse:
            message.drop()
            # mitmproxy's WebSocket layer cannot be closed from a hook: the sandbox is told in-band instead.
            notice = f"egressgw refused this message: {reason_text(misuse[0], misuse[1])} ({host})"
            ctx.master.commands.call("inject.websocket", flow, True, notice.encode(), True)
            self._emit_refusal(flow, info, *misuse)
            return
        content = message.content
        for hit in hits:
            content = content.replace(hit.secret.placeholder.encode(), values[hit.secret.spec.name].encode())
        message.content = content

    def _emit_refusal(self, flow: http.HTTPFlow, info: dict, reason: str, secret: str | None, detail: str) -> None:
        session = info["session"]
        try:
            self.audit.emit(events.make_event(
                events.HTTP, session=session.id, dest_host=info.get("host"), method="WEBSOCKET",
                client=events.address(flow.client_conn.peername),
                decision="deny", reason=reason, alert=True, secrets=[f"{secret or '?'}@websocket"],
                detail=f"websocket message dropped: {detail}"))
        except LogWriteError:
            pass  # the connection is already killed

    def _emit_cut(self, flow: http.HTTPFlow, info: dict, detail: str) -> None:
        """A streamed response cut because a real value came back and could not be masked in place."""
        session = info["session"]
        logger.warning("session %s: %s", session.id, detail)
        try:
            self.audit.emit(events.make_event(
                events.HTTP, session=session.id, dest_host=info.get("host"), dest_port=info.get("port"),
                method=flow.request.method, client=events.address(flow.client_conn.peername),
                status=flow.response.status_code if flow.response else None, decision="deny",
                rule=info.get("rule"), reason="secret-in-response", alert=True, detail=detail))
        except LogWriteError:
            pass  # the connection is cut either way

    def _mask_pairs(self, session) -> list[tuple[bytes, bytes]]:
        """(form of a real value, its placeholder) for every secret of the session whose value is cached."""
        pairs = []
        for secret in session.secrets.values():
            value = self.store.peek(parse_source(secret.spec.source))
            if value:
                placeholder = secret.placeholder.encode()
                pairs.extend((form, placeholder) for form in masks(value))
        return pairs

    @fail_closed(refuse_http)
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Stream the body unless it is small and known: a large or open-ended response is never held
        whole (a 1 GiB download grew the gateway by 2.3 GB). With real values to mask, the headers
        are masked now and the body through `ResponseWatch`; a body with a content coding is then
        buffered and masked whole in `response`, as are bodies up to STREAM_ABOVE bytes."""
        info = flow.metadata.get(META)
        resp = flow.response
        if info is None or resp is None or info.get("session") is None or resp.stream:
            return
        length = resp.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) <= STREAM_ABOVE:
            return
        if resp.status_code == 101 or flow.request.method == "HEAD":
            return
        pairs = info.get("masks", []) + self._mask_pairs(info["session"])
        if not pairs:
            resp.stream = True
            return
        if parse_codings(resp.headers.get("content-encoding")) != []:
            return  # compressed (or an unknown coding): buffered and masked whole
        self._mask_headers(resp, pairs)
        resp.stream = _MaskedStream(self, flow, info, ResponseWatch(pairs, fixed_length=length is not None))

    @staticmethod
    def _mask_headers(resp: http.Response, pairs: list[tuple[bytes, bytes]]) -> None:
        fields, changed = [], False
        for name, value in resp.headers.fields:
            for form, placeholder in pairs:
                if form in value:
                    value, changed = value.replace(form, placeholder), True
            fields.append((name, value))
        if changed:
            resp.headers.fields = tuple(fields)

    def response(self, flow: http.HTTPFlow) -> None:
        """Mask real values that come back: the sandbox only ever sees placeholders."""
        info = flow.metadata.get(META)
        resp = flow.response
        if info is None or resp is None or info.get("session") is None or resp.stream:
            return  # a streamed body was masked piece by piece (responseheaders)
        pairs = info.get("masks", []) + self._mask_pairs(info["session"])
        if not pairs:
            return
        self._mask_headers(resp, pairs)
        body = resp.get_content(strict=False) if resp.raw_content else None
        if body and any(form in body for form, _ in pairs):
            for form, placeholder in pairs:
                body = body.replace(form, placeholder)
            resp.set_content(body)
            info["detail"] = "response masked"



STREAM_ABOVE = 1 << 20  # response bodies longer than this (or of unknown length) stream to the sandbox


class _MaskedStream:
    """mitmproxy's response stream callable: each piece through `ResponseWatch` before it leaves."""

    def __init__(self, addon: Credentials, flow: http.HTTPFlow, info: dict, watch: ResponseWatch):
        self.addon, self.flow, self.info, self.watch = addon, flow, info, watch
        self.dead = False

    def __call__(self, chunk: bytes):
        if self.dead:
            return []
        try:
            out = self.watch.feed(chunk)
        except SecretInResponse as e:
            self.dead = True
            self.addon._emit_cut(self.flow, self.info, str(e))
            close_flow(self.flow)
            return []
        except Exception:  # noqa: BLE001 - fail closed: a watch that breaks forwards nothing more
            logger.exception("streamed response masking failed; cutting the flow")
            self.dead = True
            close_flow(self.flow)
            return []
        if self.watch.masked:
            self.info["detail"] = "response masked"
        return [out] if out else []
