"""CPython's cyclic garbage collector, tuned for a long-running proxy.

A running gateway holds ~100,000 long-lived objects: mitmproxy and its addons, the detection
rule pack, policies, sessions. CPython's full (generation 2) collection walks every one of them
and stops the event loop while it does. Once start-up is over, `Freeze.running` collects once
and moves what is alive into the permanent generation (gc.freeze), which no collection walks
again: a full collection then walks only what was made since.

Measured (`bash bench/run --cases https_ka_c10 http_ka_c1 --paths egressgw --rounds 2`, each
collection timed with gc.callbacks, 2026-11-23, runs alternated):

    without: 11-14 full collections a run, 80-100 ms each on average, longest 133-142 ms, 1.1-1.2 s in all
    frozen:  47-59 full collections a run, 6-10 ms each on average, longest 52-96 ms, 0.35-0.50 s in all

and again on a faster evening, with the HTTP/2 rapid-reset guard in (gateway/h2guard.py):

    without: 14-15 full collections a run, 59-65 ms each on average, longest 72-84 ms, 0.88-0.92 s in all
    frozen:  76-80 full collections a run, 4.1-4.3 ms each on average, longest 34-38 ms, 0.31-0.34 s in all

It was taken out for a while (2e1042c): under an HTTP/2 rapid reset, which then queued ~16,000
flows, the memory peak passed the 64 MB budget of tests/adversarial/test_resources.py more often
with it. The guard holds such an attack to a burst of flows; with it, frozen or not, the peak
grew 24-27 MB (5 runs each).

Young collections (~2.2-2.5 s a run) do not change: each mitmproxy flow is a reference cycle the
collector has to find, whatever is frozen.

Frozen objects are still freed by reference counting as before; only a reference cycle among
objects frozen at start-up that becomes garbage later is never collected (sessions loaded at
start-up and deleted afterwards, for instance, as far as they hold cycles).
"""

from __future__ import annotations

import gc

from gateway import metrics


def freeze() -> int:
    """Collect once, then exempt every surviving object from later collections. Returns how many."""
    gc.collect()
    gc.freeze()
    metrics.GC_FROZEN.set(gc.get_freeze_count())
    return gc.get_freeze_count()


class Freeze:
    """mitmproxy addon: freeze once the proxy is running (options configured, addons loaded)."""

    def running(self) -> None:
        freeze()
