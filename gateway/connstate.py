"""What the gateway knows about one client connection while it lives.

Addons for different steps (identity, tls, policy, dial guard) meet here:
the session a connection belongs to, the destination name it was allowed to
reach, a refusal that must stop any upstream dial, and the exact addresses
the dial guard vetted. The dial guard refuses any upstream connection whose
address is not in `vetted`: fail closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sessions.registry import Session


@dataclass
class ConnState:
    session: Session | None = None
    refused: str | None = None  # reason; set => no upstream connection may open
    host: str | None = None  # the destination name this connection was allowed (SNI or CONNECT host)
    port: int | None = None
    tunnel: bool = False  # explicit proxy: inside a CONNECT tunnel
    dial: tuple[str, int] | None = None  # address to dial instead of the one the sandbox picked
    vetted: set[tuple[str, int]] = field(default_factory=set)


class ConnTable:
    def __init__(self) -> None:
        self._states: dict[str, ConnState] = {}

    def of(self, client) -> ConnState:
        state = self._states.get(client.id)
        if state is None:
            state = self._states[client.id] = ConnState()
        return state

    def get(self, client_id: str) -> ConnState | None:
        return self._states.get(client_id)

    def drop(self, client) -> None:
        self._states.pop(client.id, None)

    def __len__(self) -> int:
        return len(self._states)
