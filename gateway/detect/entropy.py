"""Shannon entropy of a byte string, in bits per byte."""

from __future__ import annotations

import math
from collections import Counter


def shannon(data: bytes) -> float:
    if not data:
        return 0.0
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())
