"""Exfiltration detection: known values through encodings and containers, credential rules.

Pure Python + hyperscan; imports nothing from mitmproxy. See docs/detection.md.
"""

from .decode import DecodeLimit, Limits
from .rules import Allowlist, Rule, RulePack, builtin_rules, load_gitleaks
from .scanner import KNOWN, Detector, Hit, KnownValue, StreamScan

__all__ = [
    "KNOWN",
    "Allowlist",
    "DecodeLimit",
    "Detector",
    "Hit",
    "KnownValue",
    "Limits",
    "Rule",
    "RulePack",
    "StreamScan",
    "builtin_rules",
    "load_gitleaks",
]
