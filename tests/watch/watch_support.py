"""Real receivers for the watch's notifications (a JSON webhook and an SMTP server), a real
Prometheus, users sending requests, and a target without request counters, on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
from aiosmtpd.controller import Controller

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Prometheus", "SmtpSink", "StrippingProxy", "Users", "Webhook", "free_port"]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Webhook:
    """A JSON webhook: records (path, payload) of each POST and answers the scripted statuses
    first, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.requests = 0
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with hook.lock:
                    hook.requests += 1
                    status = hook.statuses.pop(0) if hook.statuses else 200
                    if status == 200:
                        hook.received.append((self.path, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def titles(self) -> list[str]:
        """The titles received, in order."""
        with self.lock:
            return [str(body.get("title", "")) for _, body in self.received]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class SmtpSink:
    """An SMTP server (aiosmtpd) that keeps every message's raw bytes."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.messages.append(envelope.content)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self) -> str:
        """An apprise mailto:// URL that delivers here, without TLS."""
        return (
            f"mailto://127.0.0.1:{self.port}?from=watch@example.com&to=ops@example.com"
            "&mode=insecure"
        )

    def close(self) -> None:
        """Stop the server."""
        self.controller.stop()


class Prometheus:
    """A real Prometheus server (Debian's `prometheus`) on 127.0.0.1 scraping `targets` every
    second; stopped by PID."""

    def __init__(self, binary: str, folder: Path, targets: list[str]) -> None:
        self.folder = folder
        config = folder / "prometheus.yml"
        listed = ", ".join(f"'{t}'" for t in targets)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: etlverify-watch\n"
            f"    static_configs:\n      - targets: [{listed}]\n",
            encoding="utf-8",
        )
        self.port = free_port()
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        """Its HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> bool:
        """Poll `/-/ready` until it answers 200 (bounded); False when it did not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant query's result ([] while Prometheus is not answering yet)."""
        try:
            body = httpx.get(
                f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": promql}, timeout=5
            ).json()
        except (httpx.HTTPError, ValueError):
            return []
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def wait_for(self, promql: str, timeout: float) -> list[dict[str, Any]]:
        """Poll until the query returns something (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = self.query(promql)
            if found:
                return found
            time.sleep(0.5)
        return []

    def stop(self) -> None:
        """Terminate, wait, kill."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Users:
    """Users of the target: `GET path` at about `rate` requests a second from a thread, each from
    one of `identities` client addresses (X-Forwarded-For: the reference trusts loopback as a
    proxy), so the per-client rate limit sees many users, as in production. Counts the answers."""

    def __init__(
        self, base_url: str, path: str = "/api/jobs", rate: float = 5.0, identities: int = 64
    ) -> None:
        self.base_url = base_url
        self.path = path
        self.interval = 1.0 / rate
        self.identities = identities
        self.statuses: dict[int, int] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="users", daemon=True)

    def _run(self) -> None:
        n = 0
        next_at = time.monotonic()
        with httpx.Client(base_url=self.base_url, timeout=5.0, trust_env=False) as client:
            while not self._stop.is_set():
                ip = f"10.66.{n % self.identities // 250}.{n % self.identities % 250 + 1}"
                try:
                    resp = client.get(self.path, headers={"X-Forwarded-For": ip})
                    self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
                except httpx.HTTPError:
                    self.failures += 1
                n += 1
                next_at += self.interval
                # paced on a schedule, not a fixed sleep: a slow answer is caught up after
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Users:
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending (within one request timeout)."""
        self._stop.set()
        self._thread.join(10)


class StrippingProxy:
    """A target without request counters, as upstream ETL Plus builds are: an HTTP proxy to
    `upstream` whose `/api/health/metrics` has no `requests` block (GET and POST only)."""

    def __init__(self, upstream: str) -> None:
        client = httpx.Client(base_url=upstream, timeout=10.0, trust_env=False)
        self.client = client

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                try:
                    resp = client.request(method, self.path, content=body, headers=headers)
                except httpx.HTTPError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = resp.content
                if self.path.startswith("/api/health/metrics") and resp.status_code == 200:
                    doc = resp.json()
                    doc.get("metrics", {}).pop("requests", None)
                    data = json.dumps(doc).encode()
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        """Where the watch is pointed."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.client.close()
