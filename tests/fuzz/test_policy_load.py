"""Policy loading never crashes: any text, any YAML/JSON document, any mutation of a real policy
either loads or raises PolicyError whose every problem names the file and a line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import PolicyError
from gateway.policy import load_policy_text
from gateway.policy.model import Policy

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "fuzz.yaml"
REAL = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "policies").glob("*.yaml"))]
KEYS = ["apiVersion", "kind", "metadata", "name", "spec", "mode", "egress", "hosts", "matchName", "matchPattern",
        "cidrs", "ports", "methods", "paths", "inspect", "protocol", "uploads", "detection", "rules", "x"]

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=30), st.sampled_from(["*", "*.example.com", "api.example.com", "10.0.0.0/8",
                                                          "::1", "443", "GET", "/v1/*", "enforce", "report", "tcp",
                                                          "http", "0x7f.1", "xn--", "ü.example", "*.com", "-1"]))
DOCUMENT = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5)),
    max_leaves=30,
)


def check(text: str) -> None:
    try:
        result = load_policy_text(text, SOURCE)
    except PolicyError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == SOURCE and problem.line >= 0 and problem.message
            assert str(problem).startswith(SOURCE)
            assert problem.line <= len(text.splitlines()) + 2, (problem, text)
        return
    assert isinstance(result, Policy)


def mutate(doc, rnd: random.Random, replacement):
    """Replace one random node of `doc` (a copy) with `replacement`."""
    doc = json.loads(json.dumps(doc))
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))

    walk(doc, ())
    path = rnd.choice(paths)
    if not path:
        return replacement
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = replacement
    return doc


@given(st.text(max_size=400))
def test_any_text(text):
    check(text)


@given(st.binary(max_size=300))
def test_any_bytes_as_latin1(data):
    check(data.decode("latin-1"))


@given(DOCUMENT, st.booleans())
def test_any_document(doc, as_json):
    check(json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True))


@given(st.sampled_from(range(len(REAL))), st.randoms(use_true_random=False), DOCUMENT, st.booleans())
def test_mutated_real_policy(which, rnd, replacement, as_json):
    doc = mutate(REAL[which], rnd, replacement)
    check(json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True))


@given(st.sampled_from(range(len(REAL))), st.randoms(use_true_random=False))
def test_truncated_or_spliced_real_policy(which, rnd):
    text = (ROOT / "policies" / sorted(p.name for p in (ROOT / "policies").glob("*.yaml"))[which]).read_text()
    cut = rnd.randrange(len(text) + 1)
    junk = rnd.choice(["", "\t", ": [", "]]", "&a *a", "!!python/object:os.system", "\x00", "- ", "{", "'"])
    check(text[:cut] + junk + text[cut + rnd.randrange(0, 20):])
