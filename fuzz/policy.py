"""Fuzz target: a policy file's bytes through the policy loader (gateway/policy/load.py).

A finding is any exception but PolicyError, or a PolicyError whose problems do not name the file
and a line within it (a problem about the whole file has line 0)."""

from __future__ import annotations

import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Finding(AssertionError):
    pass


class Target:
    def __init__(self):
        from gateway.errors import PolicyError
        from gateway.policy import load_policy_file, load_policy_text

        self.PolicyError, self.load_file, self.load_text = PolicyError, load_policy_file, load_policy_text
        self.dir = tempfile.TemporaryDirectory(prefix="egressgw-fuzz-policy-")
        self.path = Path(self.dir.name) / "fuzz.yaml"

    def __call__(self, data: bytes) -> None:
        self.path.write_bytes(data)  # through the file path: size cap, UTF-8 check, BOM
        lines = len(data.decode("utf-8", "replace").splitlines()) + 2  # YAML breaks lines at CR, LF, NEL, LS and PS
        self.check(lambda: self.load_file(self.path), str(self.path), lines)
        text = data.decode("utf-8", "replace")
        self.check(lambda: self.load_text(text, "fuzz.yaml"), "fuzz.yaml", len(text.splitlines()) + 2)

    def check(self, load, source: str, lines: int) -> None:
        try:
            load()
        except self.PolicyError as e:
            if not e.problems:
                raise Finding("PolicyError without problems") from e
            for p in e.problems:
                if p.file != source or not 0 <= p.line <= lines or not p.message:
                    raise Finding(f"problem does not name the file and a line: {p!r}") from e
        except RecursionError:
            raise Finding("recursion error (deeply nested document)") from None
        except Exception as e:
            raise Finding(f"policy loader raised {type(e).__name__}: {e}") from e


def seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((ROOT / "policies").rglob("*.yaml"))] + [
        b"{}", b"[]", b"apiVersion: egressgw.dev/v1alpha1\nkind: EgressPolicy\n", b"\xef\xbb\xbfspec: {egress: []}\n",
    ] + [p.read_bytes() for p in sorted((ROOT / "fuzz" / "regressions").glob("policy-*"))]
