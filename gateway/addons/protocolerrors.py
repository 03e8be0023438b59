"""Requests mitmproxy refuses inside its HTTP/2 layer, before any flow or hook exists.

An HTTP/2 request whose pseudo-headers mitmproxy cannot parse (userinfo in
`:authority`, a bad `:path`, ...) makes it reset the connection with a protocol
error and write one line to its own log: no flow, no `requestheaders`, no
`error` hook, so the flow log would never hear of the attempt. This addon is a
`logging.Handler` on mitmproxy's connection logger: such a line (whose record
carries the client address) becomes a `deny` event with reason `bad-request`
for the client's session. The offending header's value is not copied: it is
the sandbox's text and may hold anything.
"""

from __future__ import annotations

import logging

from gateway.log import events
from gateway.log.writer import LogWriteError
from gateway.sessions.store import SessionStoreUnavailable

LOGGER = "mitmproxy.proxy.server"
MARKERS = {
    "Invalid HTTP/2 request headers": "mitmproxy refused the HTTP/2 request: invalid request pseudo-headers",
}


class ProtocolErrors:
    """The addon (mitmproxy idiom: plain hooks); the handler it installs does the work."""

    def __init__(self, registry, audit):
        self.handler = _Handler(registry, audit)

    def running(self) -> None:
        logger = logging.getLogger(LOGGER)
        if self.handler not in logger.handlers:
            logger.addHandler(self.handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # the lines are INFO; other handlers keep their own levels

    def done(self) -> None:
        logging.getLogger(LOGGER).removeHandler(self.handler)


class _Handler(logging.Handler):
    def __init__(self, registry, audit):
        super().__init__(level=logging.INFO)
        self.registry = registry
        self.audit = audit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            detail = next((d for marker, d in MARKERS.items() if marker in message), None)
            client = getattr(record, "client", None)
            if detail is None or not client:
                return
            try:
                session = self.registry.by_source(client[0])
            except SessionStoreUnavailable:
                return
            if session is None:
                return
            self.audit.emit(events.make_event(
                events.HTTP, session=session.id, client=events.address(client), decision="deny",
                reason="bad-request", detail=detail))
        except LogWriteError:
            pass  # mitmproxy has already closed the connection
        except Exception:  # noqa: BLE001 - a logging handler must never raise into the caller
            self.handleError(record)
