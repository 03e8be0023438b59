"""hyperframe's frame repr without copying the payload.

h2 formats every frame it receives (`logger.trace("Received frame: %s", repr(frame))`, also when
the trace logger is a no-op), and hyperframe's repr of a DATA frame serializes the whole frame body
(a copy of the payload) and hex-encodes all of it, to show its first 20 hex digits. In a 1 GiB
HTTP/2 download through the gateway that was ~10% of its CPU (py-spy: `Frame.__repr__` 9.6%,
`_raw_data_repr` 6.9%; bench/README.md). `install()` makes both read only the first 11 bytes; the
text they return is the same (tests/test_h2repr.py compares them with hyperframe's own).
"""

from __future__ import annotations

import binascii

from hyperframe import frame as _frame

_HEAD = 11  # bytes behind the 20 hex digits hyperframe shows, plus one to know whether it cuts


def raw_data_repr(data: bytes | memoryview | None) -> str:
    """hyperframe's `_raw_data_repr`, hex-encoding at most 11 bytes instead of all of them."""
    if not data:
        return "None"
    r = binascii.hexlify(data[:_HEAD]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def data_body_repr(self: _frame.DataFrame) -> str:
    """A DATA frame's body repr (hyperframe: of its serialized body, padding included) from the
    first bytes of that body, without building it."""
    head = self.serialize_padding_data() + self.data[:_HEAD]
    if len(head) < _HEAD and self.pad_length:
        head += b"\0" * min(self.pad_length, _HEAD - len(head))
    return raw_data_repr(head)


_ORIGINAL = (_frame._raw_data_repr, _frame.DataFrame.__dict__.get("_body_repr"))


def install() -> None:
    """Swap the two functions in hyperframe (idempotent; the process's whole HTTP/2 stack uses them)."""
    _frame._raw_data_repr = raw_data_repr
    _frame.DataFrame._body_repr = data_body_repr  # type: ignore[method-assign]


def uninstall() -> None:
    """Put hyperframe's own functions back (tests)."""
    raw, body = _ORIGINAL
    _frame._raw_data_repr = raw
    if body is None:
        if "_body_repr" in _frame.DataFrame.__dict__:
            del _frame.DataFrame._body_repr
    else:
        _frame.DataFrame._body_repr = body  # type: ignore[method-assign]
