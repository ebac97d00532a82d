"""What the cohort judge sends for each component: the routes that component lives on.

A refactored component behind a flag is only seen by traffic that goes through it, so each
component gets its own mix (docs/deployment_checklist.md, phases 2 and 3):

- `request_handler`: `GET /api/jobs?limit=20` (request processing, validation, response building);
- `logger`: `POST /api/jobs` of a small job: its creation and its lifecycle are logged (and
  streamed as `job_log_message`), more log lines than any read;
- `exception`: `GET /api/jobs/<unknown id>` (404) and `POST /api/jobs` without `source_config`
  (400): error handling, serialization and correlation ids, each answer expected with its status
  and a contract error body (`code`, `correlationId`);
- `concurrency`: `POST /api/jobs` of a small job (the job engine's workers) and `GET /api/jobs`
  while jobs run;
- `types`: `POST /api/jobs` and `GET /api/jobs/<the side's last job>` (typed job bodies);
- `websocket`: `POST /api/jobs` of a small job and its status pushes, received over one `/ws`
  connection per side (`rollout/pushes.py`): the metric `cohort ws push`, latency to the first
  push and loss.

Every route is a metric of its own, judged per window (p50 and error rate) like any other: a
route with an expected error status counts an answer with another status, or an error body that
is not the contract's, as an error. A p50 needs 10 answers per side per window, so a component
with two routes needs twice the requests a window of one with a single route (`rate x window` of
at least 40, against 20).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "JOB_SOURCE",
    "PUSH_METRIC",
    "TRAFFIC",
    "UNKNOWN_JOB",
    "Route",
    "all_routes",
    "routes_for",
]

#: the judge's jobs: two batches of ten records, a few milliseconds each, so a job is over within
#: tens of milliseconds and its `running` and `completed` transitions are distinct (contract
#: section 4: what `source_config` means is the server's business; a plan can give its own)
JOB_SOURCE = "rows=20;batch=10;delay_ms=2"
#: a job id that no job has (the exception system's 404)
UNKNOWN_JOB = "etlvjudge_no_such_job"
#: the websocket component's metric: each job's first status push, and jobs with a lost push
PUSH_METRIC = "cohort ws push"


@dataclass(frozen=True)
class Route:
    """One kind of request the judge sends as each user."""

    method: str
    #: `{job}` is the last job the side created (types), anything else is sent as is
    path: str
    #: the statuses that count as answered; a 4xx here must also carry a contract error body
    expect: tuple[int, ...] = (200,)
    #: `job`: a small job to create; `invalid`: a job body without `source_config`
    body: str | None = None
    #: the job's status pushes are measured (the websocket component), not the answer
    push: bool = False
    #: the metric's name after `cohort `, when not `METHOD /path`
    label: str = ""

    @property
    def metric(self) -> str:
        """`cohort GET /api/jobs`, `cohort ws push`, ..."""
        if self.push:
            return PUSH_METRIC
        return f"cohort {self.label or self.method + ' ' + self.path.split('?')[0]}"

    @property
    def expects_error(self) -> bool:
        """True when the route is answered with an error status on purpose."""
        return all(s >= 400 for s in self.expect)


_LIST = Route("GET", "/api/jobs?limit=20")
_CREATE = Route("POST", "/api/jobs", expect=(200, 201), body="job")
TRAFFIC: dict[str, tuple[Route, ...]] = {
    "request_handler": (_LIST,),
    "logger": (_CREATE,),
    "exception": (
        Route("GET", f"/api/jobs/{UNKNOWN_JOB}", expect=(404,), label="GET /api/jobs/{unknown}"),
        Route("POST", "/api/jobs", expect=(400,), body="invalid", label="POST /api/jobs (invalid)"),
    ),
    "concurrency": (_CREATE, _LIST),
    "types": (_CREATE, Route("GET", "/api/jobs/{job}", label="GET /api/jobs/{id}")),
    "websocket": (Route("POST", "/api/jobs", expect=(200, 201), body="job", push=True),),
}


def routes_for(component: str | None) -> tuple[Route, ...]:
    """The component's traffic; without a component (or an unknown one) the request handler's
    `GET /api/jobs`, every component's common route."""
    return TRAFFIC.get(component or "", TRAFFIC["request_handler"])


def all_routes() -> tuple[str, ...]:
    """Every route of every component as `component: METHOD /path` (the load fingerprint)."""
    return tuple(
        f"{c}: {r.metric.removeprefix('cohort ')}" for c, routes in TRAFFIC.items() for r in routes
    )
