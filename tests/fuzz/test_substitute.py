"""Placeholder substitution (gateway/addons/credentials.py with gateway/secrets/substitute.py) as properties.

Two sessions with different real values; random text around, between and inside placeholders, in every
request part. After the addon's request hook: the real value appears exactly where this session's whole
placeholder stood (never a partial one, never another session's, never in a decoded-only spot), and the
request never carries the other session's value.
"""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.test import tflow

from gateway.addons.credentials import Credentials
from gateway.addons.refuse import META
from gateway.policy import load_policy_text
from gateway.secrets.backends import SecretStore
from gateway.secrets.model import parse_secret
from gateway.secrets.placeholders import make_placeholder
from gateway.sessions.registry import SessionRegistry

MINE = "sk-proj-" + "M1n3v4lue" * 5
THEIRS = "sk-proj-" + "Th31rv4lu" * 5
POLICY = ("apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: fuzz}\nspec:\n  mode: enforce\n"
          "  egress:\n    - name: ok\n      hosts: [{matchName: allowed.test}]\n")


class Audit:
    def emit(self, event):
        pass


@pytest.fixture(scope="module")
def world():
    mp = pytest.MonkeyPatch()
    mp.setenv("EGW_FUZZ_MINE", MINE)
    mp.setenv("EGW_FUZZ_THEIRS", THEIRS)
    registry = SessionRegistry()
    parts = ["headers", "path", "query", "body"]
    mine = registry.create("mine", load_policy_text(POLICY), secrets=[(parse_secret(
        {"name": "KEY", "source": "env://EGW_FUZZ_MINE", "hosts": ["allowed.test"], "parts": parts}),
        make_placeholder(MINE))])
    theirs = registry.create("theirs", load_policy_text(POLICY), secrets=[(parse_secret(
        {"name": "KEY", "source": "env://EGW_FUZZ_THEIRS", "hosts": ["allowed.test"], "parts": parts}),
        make_placeholder(THEIRS))])
    yield Credentials(registry, SecretStore(), Audit()), mine, theirs
    mp.undo()


FILLER = st.text("abcXYZ019 -_=&:/{}\",", max_size=12)
# a partial placeholder keeps its whole marker + core (sk-proj- egw + 12): shorter fragments are just text
TOKEN = st.sampled_from(["mine", "theirs", "partial", "encoded", "text"])
PART = st.sampled_from(["header", "path", "query", "json", "form", "raw"])


def piece(kind: str, mine: str, theirs: str, cut: int) -> str:
    return {"mine": mine, "theirs": theirs, "partial": mine[:23 + cut % (len(mine) - 23)],
            "encoded": quote(mine[:4]) + "%" + f"{ord(mine[4]):02X}" + mine[5:], "text": "plain"}[kind]


def flow_for(session, part: str, text: str):
    f = tflow.tflow()
    f.request.host = "allowed.test"
    f.request.path = "/p"
    f.request.headers.clear()
    f.request.content = b""
    if part == "header":
        f.request.headers["x-token"] = text.replace("\r", "").replace("\n", "")
    elif part == "path":
        f.request.path = "/" + text.replace("?", "").replace("#", "").replace(" ", "")
    elif part == "query":
        f.request.path = "/p?" + text.replace("#", "").replace(" ", "")
    else:
        f.request.headers["content-type"] = {"json": "application/json", "form": "application/x-www-form-urlencoded",
                                             "raw": "text/plain"}[part]
        f.request.content = (json.dumps({"k": text}) if part == "json" else text).encode()
    f.response = None
    f.metadata[META] = {"session": session, "host": "allowed.test", "decision": "allow", "port": 443}
    return f


def wire(f) -> str:
    return repr(f.request.headers.fields) + f.request.path + (f.request.raw_content or b"").decode("latin-1")


@given(st.lists(st.tuples(FILLER, TOKEN, st.integers(0, 100)), min_size=1, max_size=5), PART)
def test_substituted_only_where_whole_placeholders_of_this_session_are(world, pieces, part):
    addon, mine, theirs = world
    ph_mine, ph_theirs = mine.secrets["KEY"].placeholder, theirs.secrets["KEY"].placeholder
    kinds = [k for _, k, _ in pieces]
    text = "".join(fill + piece(k, ph_mine, ph_theirs, cut) for fill, k, cut in pieces)
    f = flow_for(mine, part, text)
    before = wire(f)
    asyncio.run(addon.request(f))
    after = wire(f) if f.response is None else ""
    answer = f.response.get_text() if f.response is not None else ""
    # never the other session's value, never a value in a refusal
    assert THEIRS not in after and THEIRS not in answer and MINE not in answer
    if any(k in ("theirs", "partial", "encoded") for k in kinds):
        # another session's placeholder, a truncated one or a %-encoded one: the request is refused whole
        assert f.response is not None and f.response.status_code == 403, (part, kinds, before)
        return
    if f.response is not None:
        assert MINE not in after
        return
    # allowed: every whole placeholder of mine became the value, nothing else did
    assert ph_mine not in after
    expected = before.count(ph_mine)
    found = after.count(MINE)  # MINE is letters, digits and '-': its path/query/JSON forms are itself
    assert found == expected, (part, kinds, before, after)
    if expected == 0:
        assert after == before


@given(st.text(max_size=60), PART)
def test_requests_without_placeholders_are_untouched(world, text, part):
    addon, mine, _ = world
    f = flow_for(mine, part, text)
    before = wire(f)
    asyncio.run(addon.request(f))
    assert f.response is None and wire(f) == before


@given(FILLER, FILLER)
def test_basic_auth_carries_the_value_only_for_a_whole_placeholder(world, user, tail):
    addon, mine, theirs = world
    ph = mine.secrets["KEY"].placeholder
    f = flow_for(mine, "raw", "")
    f.request.headers["authorization"] = "Basic " + base64.b64encode(f"{user}:{ph}{tail}".encode()).decode()
    asyncio.run(addon.request(f))
    if f.response is None:
        decoded = base64.b64decode(f.request.headers["authorization"][6:]).decode()
        assert decoded == f"{user}:{MINE}{tail}"
    else:
        assert MINE not in f.response.get_text()
