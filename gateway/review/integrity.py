"""The report's verdict on log integrity, from `gateway.log.verify` (what `egressgw log verify` says)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import EgressgwError
from gateway.log import verify


@dataclass(frozen=True)
class Integrity:
    status: str  # "ok" | "chain-only" | "truncated" | "tampered" | "unverified"
    text: str  # one line, as `log verify` prints it

    @property
    def css(self) -> str:
        return {"ok": "ok", "tampered": "bad"}.get(self.status, "warn")

    @property
    def headline(self) -> str:
        return {
            "ok": "Log integrity: verified",
            "chain-only": "Log integrity: hash chain intact; checkpoints not verified (no key)",
            "truncated": "Log integrity: intact, but the last record is torn",
            "tampered": "Log integrity: TAMPERED OR CORRUPT",
            "unverified": "Log integrity: NOT VERIFIED",
        }[self.status]


def check(paths, key: bytes | None, key_error: str | None = None) -> Integrity:
    """Run `log verify` over `paths`. `key_error`: why no key could be loaded (reported, chain still checked)."""
    try:
        result = verify.verify(paths, key)
    except FileNotFoundError as e:
        return Integrity("unverified", f"no such log file: {e}")
    except OSError as e:
        return Integrity("unverified", f"cannot read {e.filename}: {e.strerror}")
    except EgressgwError as e:
        return Integrity("unverified", str(e))
    return from_result(result, key is not None, key_error)


def from_result(result, keyed: bool, key_error: str | None = None) -> Integrity:
    text = result.summary()
    if result.error:
        return Integrity("tampered", text)
    if result.truncated:
        return Integrity("truncated", text)
    if not keyed:
        why = key_error or "no checkpoint key given (--key-file)"
        return Integrity("chain-only", f"{text}; checkpoints not verified: {why}")
    return Integrity("ok", text)
