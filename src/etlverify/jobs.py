"""Create, watch and cancel ETL jobs on the target (contract section 4)."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    import httpx

    from etlverify.client import EtlClient, Expect

__all__ = ["TERMINAL_STATUSES", "JobHelper"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: where suite jobs write; the contract leaves target_config to the server, the reference ignores it
DEFAULT_TARGET_CONFIG = "etlverify://discard"
_counter = itertools.count(1)


class JobHelper:
    """Jobs for one test. Ids it makes look like ``etlv_<run>_<n>`` (``etlv_fail_...`` for the
    failing profile) and are unique per run, also across pytest-xdist workers (the run id includes
    the worker name)."""

    def __init__(
        self,
        api: EtlClient,
        expect: Expect,
        *,
        profiles: Mapping[str, str],
        run_id: str,
        poll_interval: float = 0.1,
        default_timeout: float = 60.0,
    ) -> None:
        self.api = api
        self.expect = expect
        self.profiles = profiles
        self.run_id = run_id
        self.poll_interval = poll_interval
        self.default_timeout = default_timeout
        self.created: list[str] = []
        self._history: dict[str, list[dict[str, Any]]] = {}

    def new_id(self, profile: str = "quick") -> str:
        """A fresh job id for `profile` (the failing profile's id contains ``fail``)."""
        tag = "fail_" if profile == "failing" else ""
        return f"etlv_{tag}{self.run_id}_{next(_counter)}"

    def create(
        self, profile: str = "quick", type: str = "FULL_ETL", job_id: str | None = None
    ) -> str:
        """POST /api/jobs with the profile's source_config; returns the job id (fails the test on
        anything but 200/201 with a job_id)."""
        if profile not in self.profiles:
            raise self.expect.fail(
                f"unknown job profile {profile!r}",
                expected=", ".join(sorted(self.profiles)),
                got=profile,
            )
        job_id = job_id or self.new_id(profile)
        resp = self.api.post(
            "/api/jobs",
            json={
                "type": type,
                "source_config": self.profiles[profile],
                "target_config": DEFAULT_TARGET_CONFIG,
                "job_id": job_id,
            },
        )
        self.expect.status(resp, (200, 201))
        body = self.expect.json_fields(resp, {"job_id": str, "status": str})
        self.created.append(body["job_id"])
        return str(body["job_id"])

    def get(self, job_id: str) -> dict[str, Any]:
        """GET /api/jobs/{id} (must answer 200 with a JSON object)."""
        resp = self.api.get(f"/api/jobs/{job_id}")
        self.expect.status(resp, 200)
        return self.expect.json_fields(resp, {"status": str})

    def status(self, job_id: str) -> dict[str, Any]:
        """GET /api/jobs/{id}/status, recorded in `history`."""
        resp = self.api.get(f"/api/jobs/{job_id}/status")
        self.expect.status(resp, 200)
        body = self.expect.json_fields(resp, {"status": str})
        self._history.setdefault(job_id, []).append(body)
        return body

    def wait_for(
        self,
        job_id: str,
        statuses: Collection[str] = TERMINAL_STATUSES,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll the job's status until it is one of `statuses`; fails the test after `timeout`."""
        limit = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        wanted = set(statuses)
        while True:
            body = self.status(job_id)
            if body["status"] in wanted:
                return body
            if body["status"] in TERMINAL_STATUSES and not wanted & TERMINAL_STATUSES:
                raise self.expect.fail(
                    f"job {job_id} ended before reaching {'/'.join(sorted(wanted))}",
                    expected="/".join(sorted(wanted)),
                    got=body["status"],
                )
            if time.monotonic() >= deadline:
                raise self.expect.fail(
                    f"job {job_id} did not reach {'/'.join(sorted(wanted))} within {limit:g} s",
                    expected="/".join(sorted(wanted)),
                    got=f"{body['status']} (progress {body.get('progressPercent')}%, "
                    f"step {body.get('currentStep')!r})",
                )
            time.sleep(self.poll_interval)

    def cancel(self, job_id: str) -> httpx.Response:
        """PUT /api/jobs/{id} {"status": "cancelled"}; the response, whatever its status."""
        return self.api.put(f"/api/jobs/{job_id}", json={"status": "cancelled"})

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Every status body polled so far for `job_id`, oldest first."""
        return list(self._history.get(job_id, []))

    def cancel_unfinished(self) -> None:
        """Teardown: cancel this test's jobs that may still run (best effort, errors ignored;
        nothing is sent to a target known to be down)."""
        for job_id in self.created:
            if self.api.health.down is not None:
                return
            last = self._history.get(job_id, [{}])[-1].get("status")
            if last in TERMINAL_STATUSES:
                continue
            try:
                self.cancel(job_id)
            except Exception:
                continue
