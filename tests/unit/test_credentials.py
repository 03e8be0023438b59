"""The credentials addon and its pure parts, hook by hook (mitmproxy's own test flows)."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from gateway.addons.credentials import Credentials
from gateway.addons.refuse import META
from gateway.secrets.backends import SecretStore
from gateway.secrets.model import parse_secret
from gateway.secrets.placeholders import CORE_RE, make_placeholder, shape_of
from gateway.secrets.substitute import PlaceholderIndex, decode_basic, views, written
from gateway.sessions.registry import SessionRegistry

from .helpers import ALLOWED, policy, run

REAL = "sk-proj-" + "a1b2c3d4" * 6


class Audit:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setenv("EGW_UNIT_SECRET", REAL)
    registry = SessionRegistry()
    specs = [parse_secret({"name": "KEY", "source": "env://EGW_UNIT_SECRET", "hosts": ["allowed.test"],
                           "parts": ["headers", "query", "body"]})]
    mine = registry.create("mine", policy(ALLOWED), secrets=[(s, make_placeholder(REAL)) for s in specs])
    other = registry.create("other", policy(ALLOWED), secrets=[(s, make_placeholder(REAL)) for s in specs])
    addon = Credentials(registry, SecretStore(), Audit())
    return addon, mine, other


def flow_for(session, host="allowed.test", path="/ok/x", headers=(), body=b"", ctype=None):
    f = tflow.tflow()
    f.request.host = host
    f.request.path = path
    f.request.headers.clear()
    for k, v in headers:
        f.request.headers.add(k, v)
    if ctype:
        f.request.headers["content-type"] = ctype
    f.request.content = body
    f.response = None
    f.metadata[META] = {"session": session, "host": host, "decision": "allow", "port": 443}
    return f


@pytest.mark.parametrize("value, prefix, alphabet", [
    ("sk-ant-api03-" + "Ab9" * 30, "sk-ant-api03-", "alnum"),
    ("ghp_" + "a" * 36, "ghp_", "lower"),
    ("AKIA" + "ABCDEF0123456789", "AKIA", "upper"),
    ("xoxb-123-456-abc", "xoxb-", "alnum"),
    ("no-known-shape", "egw_", "alnum"),
    (None, "egw_", "alnum"),
])
def test_placeholders_keep_prefix_length_alphabet(value, prefix, alphabet):
    assert shape_of(value)[::2] == (prefix, alphabet)
    ph = make_placeholder(value)
    assert ph.startswith(prefix) and ph != value
    # Same length as the value, except: unknown shapes get at least 32, and the marker + core need 15.
    assert len(ph) == max(len(value or ""), 32 if prefix == "egw_" else len(prefix) + 15)
    assert CORE_RE.search(ph)
    assert make_placeholder(value) != ph  # fresh per call


@pytest.mark.parametrize("context, expected", [
    ("raw", "a b/c+d"), ("path", "a%20b%2Fc%2Bd"), ("query", "a+b%2Fc%2Bd"), ("json", "a b/c+d"),
])
def test_written_forms(context, expected):
    assert written("a b/c+d", context) == expected


def test_views_and_basic():
    assert views("a%2541") == ["a%2541", "a%41", "aA"]
    assert decode_basic("Basic " + base64.b64encode(b"u:p").decode()) == "u:p"
    assert decode_basic("Bearer x") is None


def test_index_finds_whole_and_partial_placeholders(setup):
    _, mine, _ = setup
    index = PlaceholderIndex()
    secret = mine.secrets["KEY"]
    index.add(secret)
    assert [h.partial for h in index.scan(f"x {secret.placeholder} y", "body")] == [False]
    assert [h.partial for h in index.scan(secret.placeholder[:-5], "body")] == [True]
    index.remove(secret)
    assert index.scan(secret.placeholder, "body") == []


@pytest.mark.parametrize("make", [
    lambda ph: {"headers": [("Authorization", f"Bearer {ph}")]},
    lambda ph: {"headers": [("Authorization", "Basic " + base64.b64encode(f"u:{ph}".encode()).decode())]},
    lambda ph: {"path": f"/ok/x?key={ph}"},
    lambda ph: {"body": json.dumps({"k": ph}).encode(), "ctype": "application/json"},
    lambda ph: {"body": f"k={ph}".encode(), "ctype": "application/x-www-form-urlencoded"},
])
def test_substituted_for_the_approved_host(setup, make):
    addon, mine, _ = setup
    f = flow_for(mine, **make(mine.secrets["KEY"].placeholder))
    run(addon.request(f))
    assert f.response is None
    wire = repr(f.request.headers) + f.request.path + f.request.get_text()
    basic = f.request.headers.get("authorization", "")
    if basic.startswith("Basic"):
        wire += decode_basic(basic)
    assert REAL in wire and mine.secrets["KEY"].placeholder not in wire
    assert f.request.headers.get("content-length", str(len(f.request.raw_content))) == str(len(f.request.raw_content))
    assert f.metadata[META]["secrets"]


@pytest.mark.parametrize("case, reason", [
    ("unapproved", "placeholder-not-approved"),
    ("foreign", "placeholder-foreign"),
    ("partial", "placeholder-partial"),
    ("encoded", "placeholder-encoded"),
    ("wrong-part", "placeholder-wrong-part"),
])
def test_misuse_is_refused_with_an_alert(setup, case, reason):
    addon, mine, other = setup
    ph = mine.secrets["KEY"].placeholder
    kw = {"headers": [("X-K", ph)]}
    if case == "unapproved":
        kw["host"] = "evil.test"
    elif case == "foreign":
        kw["headers"] = [("X-K", other.secrets["KEY"].placeholder)]
    elif case == "partial":
        kw["headers"] = [("X-K", ph[:-4])]
    elif case == "encoded":
        kw["headers"] = [("X-K", "".join(f"%{ord(c):02x}" for c in ph))]
    elif case == "wrong-part":
        kw = {"path": f"/ok/{ph}"}
    f = flow_for(mine, **kw)
    run(addon.request(f))
    assert f.response.status_code == 403
    assert f.metadata[META]["reason"] == reason and f.metadata[META]["alert"] is True
    assert REAL not in f.response.get_text()
    assert ("KEY" in f.response.get_text()) == (case != "foreign")


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "identity"])
def test_reflected_values_are_masked_in_encoded_responses(setup, encoding):
    addon, mine, _ = setup
    f = flow_for(mine, headers=[("X-K", mine.secrets["KEY"].placeholder)])
    run(addon.request(f))  # fetches (and caches) the value
    f.response = http.Response.make(200, b"", {"X-Echo": REAL})
    f.response.headers["content-encoding"] = encoding
    f.response.set_content(json.dumps({"echo": REAL, "escaped": REAL.replace("-", "\\u002d")}).encode())
    addon.response(f)
    body = f.response.get_content()
    assert REAL.encode() not in body and mine.secrets["KEY"].placeholder.encode() in body
    assert f.response.headers["X-Echo"] == mine.secrets["KEY"].placeholder
    if encoding == "gzip":
        assert REAL.encode() not in gzip.decompress(f.response.raw_content)


def test_deleted_session_placeholders_are_inert(setup):
    addon, mine, other = setup
    ph = other.secrets["KEY"].placeholder
    addon.registry.delete(other.id)
    f = flow_for(mine, headers=[("X-K", ph)])
    run(addon.request(f))
    assert f.response is None and f.request.headers["X-K"] == ph  # worthless: passed as an opaque string
