"""gateway/log/webhook.py against a real local HTTP server that fails, hangs, then recovers."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway import metrics
from gateway.audit import Audit
from gateway.log import events
from gateway.log.webhook import WebhookConfig, WebhookSink
from gateway.log.writer import FlowLog

from .logutil import KEY


class Hook:
    """A webhook receiver on 127.0.0.1: answers `fail_first` requests with 503, can hang."""

    def __init__(self, fail_first: int = 0, hang: float = 0.0):
        self.fail_first = fail_first
        self.hang = hang
        self.attempts: list[float] = []
        self.received: list[dict] = []
        self.paths: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts.append(time.monotonic())
                hook.paths.append(self.path)
                if hook.hang:
                    time.sleep(hook.hang)
                if len(hook.attempts) <= hook.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/SECRETPATHTOKEN"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def dropped(reason):
    return metrics.REGISTRY.get_sample_value("egressgw_webhook_alerts_dropped_total", {"reason": reason}) or 0.0


def alert(i=0):
    return events.make_event(events.HTTP, session="s-1", dest_host="evil.test", decision="deny",
                             reason="secret-detected", alert=True, detail=f"n={i}")


def test_retries_with_exponential_backoff_until_delivered(caplog):
    hook = Hook(fail_first=3)
    sink = WebhookSink(WebhookConfig(url=hook.url, backoff=0.1, max_backoff=1.0, max_retries=5))
    try:
        with caplog.at_level(logging.WARNING, logger="egressgw"):
            sink.submit(alert(1))
            assert wait_for(lambda: hook.received)
        assert hook.received == [alert(1) | {"time": hook.received[0]["time"]}]
        gaps = [b - a for a, b in zip(hook.attempts, hook.attempts[1:])]
        assert len(gaps) == 3, gaps
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps  # 0.1, 0.2, 0.4
        assert wait_for(lambda: sink.sent == 1), (sink.sent, sink.dropped)
        assert sink.dropped == 0
        # failures are logged without the URL's secret path
        assert "HTTP 503" in caplog.text and "SECRETPATHTOKEN" not in caplog.text
    finally:
        sink.close()
        hook.close()


def test_order_is_kept_across_retries():
    hook = Hook(fail_first=2)
    sink = WebhookSink(WebhookConfig(url=hook.url, backoff=0.05))
    try:
        for i in range(5):
            sink.submit(alert(i))
        assert wait_for(lambda: len(hook.received) == 5)
        assert [e["detail"] for e in hook.received] == [f"n={i}" for i in range(5)]
    finally:
        sink.close()
        hook.close()


def test_submit_never_blocks_and_a_full_queue_drops_the_oldest():
    hook = Hook(hang=0.3)  # a slow receiver
    before = dropped("queue-full")
    sink = WebhookSink(WebhookConfig(url=hook.url, timeout=5, max_queue=10, backoff=0.05))
    try:
        sink.submit(alert(0))
        assert wait_for(lambda: hook.attempts)  # in flight, the receiver hangs
        start = time.monotonic()
        for i in range(1, 100):
            sink.submit(alert(i))
        assert time.monotonic() - start < 0.2  # 99 submits while the receiver hangs
        assert sink.pending() == 11  # 10 queued + 1 in flight
        assert dropped("queue-full") - before == 89
        assert sink.dropped == 89
        # the newest 10 are kept and sent (after the one that was in flight when the flood came)
        assert wait_for(lambda: len(hook.received) == 11, timeout=20)
        assert [e["detail"] for e in hook.received] == ["n=0"] + [f"n={i}" for i in range(90, 100)]
    finally:
        sink.close(timeout=0.1)
        hook.close()


def test_gives_up_after_max_retries_and_counts_it():
    hook = Hook(fail_first=1000)
    before = dropped("retries-exhausted")
    sink = WebhookSink(WebhookConfig(url=hook.url, backoff=0.01, max_retries=2))
    try:
        sink.submit(alert())
        assert wait_for(lambda: dropped("retries-exhausted") == before + 1)
        assert len(hook.attempts) == 3 and not hook.received
    finally:
        sink.close()
        hook.close()


def test_unreachable_receiver_does_not_kill_the_sender():
    hook = Hook()
    port = hook.server.server_address[1]
    hook.close()  # nothing listens there now
    sink = WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{port}/x", backoff=0.01, max_retries=1))
    try:
        sink.submit(alert(1))
        assert wait_for(lambda: sink.dropped == 1)
        hook2 = Hook()
        sink.config = WebhookConfig(url=hook2.url, backoff=0.01)  # the thread keeps serving
        sink.submit(alert(2))
        assert wait_for(lambda: hook2.received)
        hook2.close()
    finally:
        sink.close()


@pytest.mark.parametrize("fmt", ["native", "ocsf"])
def test_audit_sends_alerts_only(tmp_path, fmt):
    hook = Hook()
    audit = Audit(FlowLog(tmp_path / "log" / "flows.jsonl", key=KEY),
                  WebhookSink(WebhookConfig(url=hook.url, format=fmt)))
    try:
        audit.emit(events.make_event(events.HTTP, dest_host="allowed.test", decision="allow"))
        audit.emit(alert(7))
        assert wait_for(lambda: hook.received)
        time.sleep(0.1)
        assert len(hook.received) == 1
        body = hook.received[0]
        native = body if fmt == "native" else body["unmapped"]["egressgw"]
        assert native["alert"] is True and native["detail"] == "n=7"
        if fmt == "ocsf":
            assert body["class_uid"] == 4002 and body["is_alert"] is True
    finally:
        audit.close()
        hook.close()
