"""The policy engine: load an egress policy and decide, per connection and request.

Pure Python: nothing here imports mitmproxy, so the engine can be checked,
tested and explained without the proxy.
"""

from .decide import REASONS, Decider, Decision, normalize_path
from .hosts import HostError, normalize_host, parse_ip_literal
from .load import check_files, load_policy_file, load_policy_text
from .model import HostSelector, Policy, Rule

__all__ = [
    "REASONS",
    "Decider",
    "Decision",
    "HostError",
    "HostSelector",
    "Policy",
    "Rule",
    "check_files",
    "load_policy_file",
    "load_policy_text",
    "normalize_host",
    "normalize_path",
    "parse_ip_literal",
]
