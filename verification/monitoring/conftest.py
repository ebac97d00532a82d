"""Fixtures of the monitoring validation suite: the alerts file and a local webhook receiver."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from etlverify.health import health_for

from .support import AlertsLog, WebhookReceiver

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _ops_need_an_answering_target(request: pytest.FixtureRequest) -> None:
    """A check that runs the target's monitor script against it is not started while the target
    is known to be down or its WebSocket handshakes hang (the script would wait out its own
    timeouts): blocked at once instead, tied to the health event. A restart a check makes on
    purpose is `planned` and blocks nothing."""
    if "etl_ops" in request.fixturenames:
        target = request.getfixturevalue("etl_target")
        # the script checks /ws too: a handshake known to hang would cost it its timeout per pass
        health_for(target.base_url).before_request("monitor.sh check", websocket=True)


@pytest.fixture
def alerts(etl_deploy_root: Path) -> AlertsLog:
    """The deployment's `logs/alerts_*.log`, read from now on; skips without a deploy root."""
    log = AlertsLog(etl_deploy_root / "logs")
    log.mark()
    return log


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """An HTTP receiver on a free 127.0.0.1 port that records POSTs; stopped at teardown."""
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, 1 << 20))
            receiver.record(self.path, dict(self.headers.items()), body)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            return  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/etlverify"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
