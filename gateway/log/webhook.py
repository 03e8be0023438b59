"""Alert webhook: POST each alert event as JSON to a URL, never blocking the data path.

`WebhookSink.submit(event)` only puts the event on a bounded queue (dropping the
oldest, counted in `egressgw_webhook_dropped_total`, when it is full); one
daemon thread POSTs them in order, retrying failures with exponential backoff.
Events are already clean (no secret values: `events.make_event` never takes one).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway import metrics
from gateway.errors import ConfigError

logger = logging.getLogger("egressgw")

_KEYS = {"url", "timeoutSeconds", "maxQueue", "maxRetries", "backoffSeconds", "maxBackoffSeconds", "format"}


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: float = 5.0
    max_queue: int = 1000
    max_retries: int = 5  # attempts after the first; then the event is dropped (counted)
    backoff: float = 0.5  # first retry delay; doubles per attempt
    max_backoff: float = 30.0
    format: str = "native"  # native | ocsf


def parse_webhook(value: object, source: str) -> WebhookConfig:
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: log.webhook must be a mapping with at least `url`")
    unknown = set(value) - _KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key log.webhook.{sorted(unknown)[0]} (known: {', '.join(sorted(_KEYS))})")
    url = value.get("url")
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: log.webhook.url must be an http:// or https:// URL")
    kw: dict = {"url": url}
    for key, attr, kind in (("timeoutSeconds", "timeout", float), ("backoffSeconds", "backoff", float),
                            ("maxBackoffSeconds", "max_backoff", float), ("maxQueue", "max_queue", int),
                            ("maxRetries", "max_retries", int)):
        if key in value:
            v = value[key]
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            if kind is int:
                ok = ok and isinstance(v, int)
            if not ok or (key in ("timeoutSeconds", "maxQueue") and v <= 0):
                raise ConfigError(f"{source}: log.webhook.{key} must be a positive {'whole ' if kind is int else ''}"
                                  f"number, not {v!r}")
            kw[attr] = kind(v)
    if "format" in value:
        if value["format"] not in ("native", "ocsf"):
            raise ConfigError(f"{source}: log.webhook.format must be native or ocsf")
        kw["format"] = value["format"]
    return WebhookConfig(**kw)


def _redacted(url: str) -> str:
    """The URL without path and query: webhook URLs (Slack) carry their secret there."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}/…"


class WebhookSink:
    def __init__(self, config: WebhookConfig):
        self.config = config
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._inflight = False
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="egressgw-webhook", daemon=True)
        self._thread.start()

    def submit(self, event: dict) -> None:
        """Queue one event; O(1), never waits on the network."""
        if self.config.format == "ocsf":
            from gateway.log.ocsf import to_ocsf
            body = to_ocsf(event)
        else:
            body = event
        with self._cond:
            if len(self._queue) >= self.config.max_queue:
                self._queue.popleft()
                self._drop("queue-full")
            self._queue.append(body)
            self._cond.notify()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        metrics.WEBHOOK_DROPPED.labels(reason).inc()

    def _post(self, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        req = urllib.request.Request(self.config.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "egressgw-webhook"})
        with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
            resp.read()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                body = self._queue.popleft()  # in flight: no longer counted against maxQueue
                self._inflight = True
            try:
                self._deliver(body)
            finally:
                self._inflight = False

    def _deliver(self, body: dict) -> None:
        delay = self.config.backoff
        for attempt in range(self.config.max_retries + 1):
            try:
                self._post(body)
            except (OSError, urllib.error.URLError, ValueError) as e:
                status = getattr(e, "code", None)
                logger.warning("alert webhook %s failed (attempt %d): %s", _redacted(self.config.url),
                               attempt + 1, f"HTTP {status}" if status else type(e).__name__)
                if attempt == self.config.max_retries:
                    self._drop("retries-exhausted")
                    return
                with self._cond:
                    if self._closed:
                        self._drop("shutdown")
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.config.max_backoff)
                continue
            self.sent += 1
            metrics.WEBHOOK_SENT.inc()
            return

    def pending(self) -> int:
        """Alerts not yet delivered: waiting in the queue or in flight."""
        with self._cond:
            return len(self._queue) + (1 if self._inflight else 0)

    def close(self, timeout: float = 2.0) -> None:
        """Give queued alerts `timeout` seconds to go out, then stop."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        with self._cond:
            self._closed = True
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _ in range(left):
            self._drop("shutdown")
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
