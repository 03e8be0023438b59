"""gateway.h2repr: hyperframe's frame repr from the first bytes only, the same text as hyperframe's own."""

from __future__ import annotations

import pytest
from hyperframe import frame as hf

from gateway import h2repr


def _frames():
    out = []
    for n in (0, 1, 9, 10, 11, 12, 16384):
        body = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        out.append((f"data {n}", hf.DataFrame(1, body)))
        out.append((f"data {n} memoryview", hf.DataFrame(1, memoryview(body))))
        for pad in (0, 1, 9, 30):
            f = hf.DataFrame(3, body, flags=["PADDED", "END_STREAM"])
            f.pad_length = pad
            out.append((f"data {n} padded {pad}", f))
        out.append((f"push_promise {n}", hf.PushPromiseFrame(1, promised_stream_id=2, data=body)))
        out.append((f"headers {n}", hf.HeadersFrame(1, body, flags=["END_HEADERS"])))
        out.append((f"goaway {n}", hf.GoAwayFrame(0, last_stream_id=5, error_code=1, additional_data=body)))
        out.append((f"continuation {n}", hf.ContinuationFrame(1, body)))
    out.append(("settings", hf.SettingsFrame(0, settings={hf.SettingsFrame.MAX_FRAME_SIZE: 16384})))
    out.append(("window update", hf.WindowUpdateFrame(1, window_increment=100)))
    out.append(("ping", hf.PingFrame(0, opaque_data=b"12345678")))
    return out


FRAMES = _frames()


@pytest.fixture
def original():
    h2repr.uninstall()
    yield
    h2repr.uninstall()


@pytest.mark.parametrize("name,frame", FRAMES, ids=[n for n, _ in FRAMES])
def test_same_text_as_hyperframe(original, name, frame):
    want = repr(frame)
    h2repr.install()
    h2repr.install()  # idempotent
    assert repr(frame) == want


def test_data_frame_repr_does_not_serialize_the_body(original, monkeypatch):
    """The whole point: no copy and no hex of the payload (hyperframe's repr serializes the body)."""
    h2repr.install()
    frame = hf.DataFrame(1, b"x" * 16384)
    monkeypatch.setattr(hf.DataFrame, "serialize_body", lambda self: pytest.fail("payload serialized"))
    assert repr(frame).endswith("<hex:78787878787878787878...>")


def test_uninstall_restores_hyperframe(original):
    h2repr.install()
    h2repr.uninstall()
    assert hf._raw_data_repr is h2repr._ORIGINAL[0]
    assert "_body_repr" not in hf.DataFrame.__dict__ or hf.DataFrame.__dict__["_body_repr"] is h2repr._ORIGINAL[1]
