"""HTTP/2 requests mitmproxy refuses before any hook are logged from its own log line
(end to end: tests/adversarial/test_http_tls.py, h2-authority-with-userinfo)."""

from __future__ import annotations

import logging

import pytest

from gateway.addons.protocolerrors import LOGGER, ProtocolErrors
from gateway.sessions.store import SessionStoreUnavailable


class Session:
    id = "s-1"


class Registry:
    def __init__(self, sessions=None, down=False):
        self.sessions, self.down = sessions or {}, down

    def by_source(self, ip):
        if self.down:
            raise SessionStoreUnavailable("store down")
        return self.sessions.get(ip)


class Audit:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


@pytest.mark.parametrize("message, client, registry, logged", [
    ("10.0.0.2:5000: Invalid HTTP/2 request headers: bad authority 'a@evil'", ("10.0.0.2", 5000),
     Registry({"10.0.0.2": Session()}), True),
    ("10.0.0.3:5000: Invalid HTTP/2 request headers: x", ("10.0.0.3", 5000), Registry({"10.0.0.2": Session()}), False),
    ("client connect", ("10.0.0.2", 5000), Registry({"10.0.0.2": Session()}), False),
    ("10.0.0.2:5000: Invalid HTTP/2 request headers: x", None, Registry({"10.0.0.2": Session()}), False),
    ("10.0.0.2:5000: Invalid HTTP/2 request headers: x", ("10.0.0.2", 5000), Registry(down=True), False),
])
def test_a_refused_h2_request_becomes_one_deny_event(message, client, registry, logged):
    audit = Audit()
    addon = ProtocolErrors(registry, audit)
    addon.running()
    try:
        logging.getLogger(LOGGER).info(message, extra={"client": client})
    finally:
        addon.done()
    assert len(audit.events) == (1 if logged else 0)
    if logged:
        event = audit.events[0]
        assert event["decision"] == "deny" and event["reason"] == "bad-request" and event["session"] == "s-1"
        assert "evil" not in str(event)  # the sandbox's header text is not copied
    assert addon.handler not in logging.getLogger(LOGGER).handlers
