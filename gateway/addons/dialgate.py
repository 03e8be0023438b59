"""The last door: every upstream connection passes here before it opens.

Only an address that an earlier step vetted for this very client connection
may be dialled; anything else (a refused connection, an address the sandbox
picked, a connection with no session) is killed before connect. For TLS the
upstream server name is the name that was allowed, never an address.
"""

from __future__ import annotations

import logging

from mitmproxy.proxy import server_hooks

logger = logging.getLogger("egressgw.dial")


class DialGate:
    def __init__(self, conns):
        self.conns = conns

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        state = self.conns.get(data.client.id)
        if state is None or state.session is None:
            data.server.error = "no-session"
            return
        if state.refused:
            data.server.error = state.refused
            return
        if state.dial and data.server.address != state.dial:
            data.server.address = state.dial
        if tuple(data.server.address) not in state.vetted:
            logger.warning("refusing unvetted upstream address for session %s", state.session.id)
            data.server.error = "address-not-allowed"
            return
        if state.host and data.server.sni is not None:
            data.server.sni = state.host
