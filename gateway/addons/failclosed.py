"""Fail closed when a deciding hook breaks.

mitmproxy calls every addon hook inside `safecall()`: an exception is logged
and the flow goes on to the next addon, as if nothing had been decided. For a
hook whose job is to refuse, that would be an open door. `fail_closed(refuse)`
wraps such a hook: any exception runs `refuse` on the hook's arguments instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

logger = logging.getLogger("egressgw")


def fail_closed(on_error: Callable[..., None]):
    def wrap(hook):
        if inspect.iscoroutinefunction(hook):
            @functools.wraps(hook)
            async def guarded(self, *args):
                try:
                    return await hook(self, *args)
                except Exception:  # noqa: BLE001 - every failure must refuse, whatever it is
                    logger.exception("%s.%s failed; refusing", type(self).__name__, hook.__name__)
                    on_error(self, *args)
        else:
            @functools.wraps(hook)
            def guarded(self, *args):
                try:
                    return hook(self, *args)
                except Exception:  # noqa: BLE001
                    logger.exception("%s.%s failed; refusing", type(self).__name__, hook.__name__)
                    on_error(self, *args)
        return guarded
    return wrap


def refuse_http(self, flow) -> None:
    from gateway.addons.refuse import refuse

    refuse(flow, "bad-request", None)  # a refused CONNECT opens no tunnel


def refuse_tls(self, data) -> None:
    self.conns.of(data.context.client).refused = "bad-request"
    data.ignore_connection = True


def refuse_tcp(self, flow) -> None:
    self.conns.of(flow.client_conn).refused = "bad-request"


def refuse_client(self, client) -> None:
    client.error = "refused"


def refuse_dns(self, flow) -> None:
    """A DNS hook failed: REFUSED, and the refusal logged (every query is in the flow log)."""
    from mitmproxy.net.dns import response_codes

    from gateway.detect.dnstunnel import unchecked_name
    from gateway.log import events

    flow.response = flow.request.fail(response_codes.REFUSED)
    q = flow.request.question if flow.request.questions else None
    try:
        self.audit.emit(events.make_event(
            events.DNS, client=events.address(flow.client_conn.peername),
            dns_qname=unchecked_name(q.name) if q else None, dns_rcode="REFUSED", decision="deny",
            reason="bad-request",
            detail="the gateway failed while handling this query and refused it (see the gateway's own log)"))
    except Exception:  # noqa: BLE001 - the refusal stands whatever the log does
        logger.error("a refused DNS query could not be logged")
