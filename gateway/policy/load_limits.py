"""`spec.limits` YAML -> Limits, with the loader's own line-and-fix problems.

Every key is optional (absent keys keep their safe defaults); each is a whole
number within a sane range. Upload bytes per window are set with
`spec.detection.uploadBudget`, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from .model import LIMIT_KEYS, Limits

if TYPE_CHECKING:
    from .load import _Reader

_INT = "tag:yaml.org,2002:int"
# key -> (smallest, largest, example)
_RANGES = {
    "connections": (1, 1_000_000, 256),
    "requestsPerSecond": (1, 1_000_000, 100),
    "headerCount": (1, 10_000, 100),
    "headerBytes": (256, 16 << 20, 65536),
    "urlBytes": (16, 16 << 20, 16384),
    "bodyBytes": (0, 1 << 50, 1 << 30),
    "bodyChunks": (1, 1 << 40, 4096),
    "websocketMessageBytes": (1, 1 << 30, 16 << 20),
    "dnsQueriesPerSecond": (1, 1_000_000, 200),
    "tlsHandshakesPerSecond": (1, 1_000_000, 50),
    "streamResetsPerSecond": (1, 1_000_000, 100),
}


def read_limits(reader: "_Reader", node: yaml.Node | None) -> Limits | None:
    """The limits block (defaults when absent); None when it has problems (they are recorded)."""
    if node is None:
        return Limits()
    fields = reader.mapping(node, "spec.limits", tuple(LIMIT_KEYS))
    if fields is None:
        return None
    before = len(reader.problems)
    values: dict[str, int] = {}
    for key, attr in LIMIT_KEYS.items():
        value_node = fields.get(key)
        if value_node is None:
            continue
        low, high, example = _RANGES[key]
        where = f"spec.limits.{key}"
        fix = f"write a whole number from {low} to {high}, e.g. `{key}: {example}`"
        value = reader.scalar(value_node, where, _INT, fix)
        if value is None:
            continue
        if not low <= value <= high:
            reader.problem(value_node, f"{where}: {value} is out of range", fix)
            continue
        values[attr] = value
    if len(reader.problems) > before:
        return None
    return Limits(**values, declared=True)
