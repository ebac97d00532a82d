"""The ETL Plus load scenario and its performance gate.

    locust -f loadtests/etl.py --headless            # embedded target, this machine's baseline
    # a deployed target, judged against its reviewed baseline (baselines/README.md), and how
    # that baseline is recorded (three runs, then review and commit):
    locust -f loadtests/etl.py --headless -H http://etl.example:8080 --etl-baseline FILE
    locust -f loadtests/etl.py --headless -H http://etl.example:8080 --etl-record FILE
    locust -f loadtests/etl.py                       # the web UI; the verdict when Locust quits
    locust -f loadtests/etl.py --etl-help            # Locust's help with the --etl-* options
    python loadtests/etl.py --help                   # the same

Two user classes:

- `EtlApiUser` (FastHttpUser): the REST job mix of a dashboard and an ETL client: health checks,
  job lists, job creation, status polling, job metrics, and cancellation of long jobs.
- `EtlPushUser`: subscribes over WebSocket to a job it is about to create, then measures the push
  latency from the REST call that caused a transition to the pushed `job_status_update`: the
  create POST to the first status update (`WS push first-status`) and the cancel PUT to the
  `cancelled` update (`WS push cancelled`). Both appear in Locust's statistics as type `WS`.

Every virtual user sends its own `X-Forwarded-For` identity (contract section 6: rate limits are per
client). Options, recording, distributed merging and the verdict live in
`etlverify.locust_support`; the exit codes are documented there and in docs/locust.md.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections import deque
from typing import Any

from locust import FastHttpUser, between, events, task

from etlverify import locust_support as gate
from etlverify.locust_support import PushChannel, PushTimeout

GATE = gate.install(events)

#: Job profiles (the reference reads `source_config` as key=value pairs; contract section 4).
QUICK_JOB = "rows=200;batch=50;delay_ms=5"
LONG_JOB = "rows=100000;batch=100;delay_ms=50"
JOB_TYPES = ("EXTRACT", "TRANSFORM", "LOAD", "FULL_ETL")

_job_counter = itertools.count()


def _job_id(prefix: str) -> str:
    # Unique across runs against a long-lived target (job ids must not repeat: 409).
    return f"lt-{prefix}-{uuid.uuid4().hex[:12]}-{next(_job_counter)}"


def _job_body(source: str, job_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": random.choice(JOB_TYPES),
        "source_config": source,
        "target_config": "table=loadtest",
    }
    if job_id is not None:
        body["job_id"] = job_id
    return body


class _IdentityMixin:
    """Per-user client identity and auth headers, set once in `on_start`."""

    headers: dict[str, str]

    def _identity_headers(self, environment: Any) -> dict[str, str]:
        return {"X-Forwarded-For": gate.next_identity(environment), **gate.auth_headers()}


class EtlApiUser(_IdentityMixin, FastHttpUser):
    """The REST job mix; weights approximate a dashboard plus a job-submitting client."""

    weight = 5
    wait_time = between(0.05, 0.25)
    # Connection errors and 5xx are failures, not exceptions: the gate counts them as errors.
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.headers = self._identity_headers(self.environment)
        self.jobs: deque[str] = deque(maxlen=32)

    def _own_job(self) -> str | None:
        return random.choice(self.jobs) if self.jobs else None

    def _get_ok(self, path: str, name: str) -> None:
        """GET `path`, reported under `name`; anything but 200 is a failure in the stats."""
        with self.client.get(path, name=name, headers=self.headers, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}")

    @task(4)
    def health(self) -> None:
        self._get_ok("/api/health", "/api/health")

    @task(2)
    def list_jobs(self) -> None:
        self._get_ok("/api/jobs?limit=20", "/api/jobs")

    @task(2)
    def create_job(self) -> None:
        job_id = self._create(QUICK_JOB)
        if job_id is not None:
            self.jobs.append(job_id)

    def _create(self, source: str) -> str | None:
        with self.client.post(
            "/api/jobs",
            name="/api/jobs",
            json=_job_body(source),
            headers=self.headers,
            catch_response=True,
        ) as resp:
            if resp.status_code not in (200, 201):
                resp.failure(f"expected 200/201, got {resp.status_code}")
                return None
            job_id = (resp.json() or {}).get("job_id")
            if not isinstance(job_id, str):
                resp.failure("create answer has no job_id")
                return None
            return job_id

    @task(4)
    def poll_status(self) -> None:
        job_id = self._own_job()
        if job_id is not None:
            self._get_ok(f"/api/jobs/{job_id}/status", "/api/jobs/[id]/status")

    @task(1)
    def job_metrics(self) -> None:
        job_id = self._own_job()
        if job_id is not None:
            self._get_ok(f"/api/jobs/{job_id}/metrics", "/api/jobs/[id]/metrics")

    @task(1)
    def cancel_long_job(self) -> None:
        # A long job is created for the purpose, so that the cancel always meets a live job.
        job_id = self._create(LONG_JOB)
        if job_id is None:
            return
        with self.client.put(
            f"/api/jobs/{job_id}",
            name="/api/jobs/[id]",
            json={"status": "cancelled"},
            headers=self.headers,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}")


class EtlPushUser(_IdentityMixin, FastHttpUser):
    """WebSocket push latency: subscribe to a job id, create the job, cancel it, time the pushes."""

    fixed_count = 2
    wait_time = between(0.2, 0.5)
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        self.headers = self._identity_headers(self.environment)
        self.timeout_s = GATE.options.ws_timeout_s if GATE.options is not None else 5.0
        self.channel: PushChannel | None = None
        self._connect()

    def _connect(self) -> None:
        host = self.host or ""  # set by Locust from --host or the gate's embedded target
        url = host.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        started = time.perf_counter()
        try:
            self.channel = PushChannel(url, headers=self.headers, timeout_s=self.timeout_s)
        except Exception as exc:  # refused upgrade, timeout, reset: one failed "connect" sample
            self.channel = None
            gate.fire_ws(self.environment, "connect", started, exception=exc)
        else:
            gate.fire_ws(self.environment, "connect", started)

    def on_stop(self) -> None:
        if self.channel is not None:
            self.channel.close()

    @task
    def push_cycle(self) -> None:
        if self.channel is None:
            self._connect()
            if self.channel is None:
                return
        channel = self.channel
        job_id = _job_id("ws")
        try:
            # Subscribing before the job exists means no transition can be missed.
            channel.subscribe([job_id], ["job_status_update"])
        except Exception as exc:
            gate.fire_ws(self.environment, "subscribe", time.perf_counter(), exception=exc)
            channel.close()
            self.channel = None
            return

        def update_of(status: str | None) -> Any:
            def match(msg: dict[str, Any]) -> bool:
                data = msg.get("data") or {}
                return (
                    msg.get("type") == "job_status_update"
                    and data.get("jobId") == job_id
                    and (status is None or data.get("status") == status)
                )

            return match

        created = time.perf_counter()
        resp = self.client.post(
            "/api/jobs", name="/api/jobs", json=_job_body(LONG_JOB, job_id), headers=self.headers
        )
        if resp.status_code not in (200, 201):
            return  # already a failed POST sample in the statistics
        try:
            _, received = channel.wait_for(update_of(None))
            gate.fire_ws(self.environment, "push first-status", created, ended=received)
        except PushTimeout as exc:
            gate.fire_ws(self.environment, "push first-status", created, exception=exc)
        cancelled = time.perf_counter()
        resp = self.client.put(
            f"/api/jobs/{job_id}",
            name="/api/jobs/[id]",
            json={"status": "cancelled"},
            headers=self.headers,
        )
        if resp.status_code != 200:
            return
        try:
            _, received = channel.wait_for(update_of("cancelled"))
            gate.fire_ws(self.environment, "push cancelled", cancelled, ended=received)
        except PushTimeout as exc:
            gate.fire_ws(self.environment, "push cancelled", cancelled, exception=exc)


if __name__ == "__main__":
    # `locust --help` answers before it imports a locustfile, so it cannot list the --etl-*
    # options (locust#2917); run as a script, this file prints Locust's help with them.
    import sys

    from locust.argument_parser import get_parser

    if {"-h", "--help"} & set(sys.argv[1:]):
        get_parser().print_help()
        sys.exit(0)
    sys.stderr.write(
        "this is a locustfile: run `locust -f loadtests/etl.py [--headless]`; "
        "`python loadtests/etl.py --help` lists the options\n"
    )
    sys.exit(2)
