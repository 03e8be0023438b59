"""Masking real secret values in a response body that streams (never held whole).

A response whose body is large or of unknown length streams to the sandbox in
pieces. `ResponseWatch` sees each piece before it leaves and replaces every
form of a real value (`substitute.masks`) with its placeholder. It holds back
the last ``longest form - 1`` bytes of each piece, so a value split across two
pieces is never half sent: the sandbox gets at most a prefix shorter than any
value, never a part of one it could join with the next piece.

When the body has a fixed length (``Content-Length``) and a placeholder is not
as long as the value it replaces, the body cannot be rewritten: `feed` raises
`SecretInResponse` and the caller cuts the connection instead (fail closed).

Pure: no mitmproxy. Bodies with a content coding are not streamed while masks
apply (the caller buffers and masks them whole), since a compressed stream
cannot be held back by value boundaries.
"""

from __future__ import annotations

from gateway.errors import EgressgwError


class SecretInResponse(EgressgwError):
    """A real value in a fixed-length streamed response that cannot be masked in place."""

    def __init__(self, placeholder: str):
        super().__init__(f"a real secret value came back in a streamed response (masked as {placeholder}); "
                         "the body has a fixed length, so the connection was cut")
        self.placeholder = placeholder


class ResponseWatch:
    def __init__(self, pairs: list[tuple[bytes, bytes]], fixed_length: bool):
        self.pairs = sorted({p for p in pairs if p[0]}, key=lambda p: -len(p[0]))  # longest forms first
        self.keep = max((len(form) for form, _ in self.pairs), default=1) - 1
        self.fixed_length = fixed_length
        self.tail = b""
        self.masked = 0  # forms replaced so far

    def feed(self, chunk: bytes) -> bytes:
        """The bytes that may leave now (b"" at the end of the body flushes what was held back)."""
        data = self.tail + chunk
        if chunk:
            # only bytes that cannot be the start of a form still arriving may leave
            cut = max(0, len(data) - self.keep)
            data, self.tail = data[:cut], data[cut:]
            data, self.tail = self._mask(data, self.tail)
        else:
            self.tail = b""
            data, _ = self._mask(data, b"")
        return data

    def _mask(self, data: bytes, tail: bytes) -> tuple[bytes, bytes]:
        # A form may start in `data` and end in `tail`: search the joined bytes, but only for forms
        # that start inside `data`; whatever such a form covers of the tail leaves with it.
        joined = data + tail
        if not any(form in joined for form, _ in self.pairs):
            return data, tail
        out, i, n = bytearray(), 0, len(data)
        while i < n:
            best = None
            for form, placeholder in self.pairs:
                j = joined.find(form, i, n + len(form) - 1)
                if j != -1 and j < n and (best is None or j < best[0]):
                    best = (j, form, placeholder)
            if best is None:
                out += joined[i:n]
                i = n
                break
            j, form, placeholder = best
            if self.fixed_length and len(placeholder) != len(form):
                raise SecretInResponse(placeholder.decode(errors="replace"))
            out += joined[i:j] + placeholder
            self.masked += 1
            i = j + len(form)
        return bytes(out), joined[max(i, n):]
