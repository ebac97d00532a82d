"""Post-deployment functional testing: no malformed input gives a 5xx or a dropped connection.

Checklist "1. Functional Testing": "Validate error handling and reporting". Contract section 2: "No
input, however malformed (bad JSON, wrong types, huge or binary bodies, SQL/XSS/path-traversal
strings, unknown methods), may produce a 5xx or a dropped connection", and every 4xx/5xx has the
JSON error body.

Hypothesis generates the requests, against a remote target and therefore on a budget: at most
`ETLPLUS_FUZZ_BUDGET_S` seconds (default 20) and `ETLPLUS_FUZZ_EXAMPLES` requests (default 100) per
test. No contract violation is raised inside the generated examples, so hypothesis never shrinks
and never prints a falsifying example: violations are collected, one per kind, status and route,
and reported together after hypothesis returns, each as one line with expected/got and its curl
reproduction. The first request that gets no answer (timeout, reset, refused) ends the fuzzing at
once, as does the end of the time budget (`StopFuzzing`); a health probe then tells a connection
one malformed request broke (a contract violation) from a target that stopped answering altogether
(reported as such, with the request that met it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from etlverify.errors import CheckFailed, TargetError

if TYPE_CHECKING:
    import httpx

    from etlverify.client import EtlClient, Expect

ITEM = "post.1_functional_testing.validate_error_handling"

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.functional,
    pytest.mark.heavy,
    pytest.mark.checklist(ITEM),
]

#: findings shown in full; more are counted
MAX_LINES = 20
#: the longest description of a request that got no answer (the curl line has it all)
MAX_WHAT = 240
#: how long the health probe after a transport failure may wait
PROBE_TIMEOUT_S = 2.0

NASTY = [
    "' OR '1'='1",
    "1; DROP TABLE jobs;--",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%00",
    "\x00",
    "\u202e",
    "💥",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "a" * 300,
    "-1",
    "1e309",
    "NaN",
    "null",
    "[]",
    "{}",
]
text_values = st.one_of(st.sampled_from(NASTY), st.text(max_size=80))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text_values,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(text_values, children, max_size=4)
    ),
    max_leaves=12,
)
job_fields = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["EXTRACT", "load", "Full_Etl", ""]), json_values),
        "source_config": json_values,
        "target_config": json_values,
        "job_id": st.one_of(text_values, json_values),
        "status": st.one_of(st.sampled_from(["cancelled", "running", "completed"]), json_values),
        "username": json_values,
        "password": json_values,
    },
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=2048).map(lambda b: ("raw", b)),
    text_values.map(lambda t: ("raw", t.encode("utf-8", "surrogatepass"))),
    json_values.map(lambda v: ("json", v)),
    job_fields.map(lambda v: ("json", v)),
)
segment = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=40)).map(
    lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")
)
ROUTES = [
    "/api/jobs",
    "/api/jobs/{}",
    "/api/jobs/{}/status",
    "/api/jobs/{}/metrics",
    "/api/health",
    "/api/health/{}",
    "/api/health/status",
    "/api/health/metrics",
    "/api/monitor/status",
    "/api/monitor/metrics",
    "/api/monitor/jobs",
    "/api/flags",
    "/api/flags/users/{}",
    "/api/auth/login",
    "/api/auth/profile",
    "/api/logs",
    "/api/{}",
    "/{}",
    "/api/{}/{}",
]
#: query strings: none, odd shapes, and generated key/value pairs (always validly %-encoded)
queries = st.one_of(
    st.just(""),
    st.sampled_from(["?", "?a", "?a=1&a=2", "?limit=-1", "?status=running", "?page=1e309"]),
    st.dictionaries(text_values, text_values, min_size=1, max_size=3).map(
        lambda d: (
            "?"
            + urlencode(
                {
                    k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
                    for k, v in d.items()
                }
            )
        )
    ),
)
#: (route template, path with query string)
paths = st.builds(
    lambda route, segs, query: (route, route.format(*segs) + query),
    st.sampled_from(ROUTES),
    st.lists(segment, min_size=2, max_size=2),
    queries,
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
#: syntactically valid methods no ETL Plus route knows (RFC 9110 token characters)
UNKNOWN_METHODS = ["FOO", "A", "PROPFIND", "BREW", "M-SEARCH", "GET2", "purge"]
content_types = st.sampled_from(
    [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "",
    ]
)
#: routes a fuzzer must not touch: fault switches, and logout (it would revoke the suite's token)
EXCLUDED = ("/api/_", "/api/auth/logout")


# -- the budget ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How long and how many requests one fuzz test may spend on the target."""

    seconds: float
    examples: int

    def settings(self) -> settings:
        """Hypothesis settings for this budget: generate only (no shrinking, no replay database),
        no deadline (the target's latency is not the generator's), health checks off (the
        target's speed is not a property of the strategies)."""
        return settings(
            max_examples=self.examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
        )


def _env_number(name: str, default: float, *, integer: bool) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not value > 0:
        kind = "a whole number > 0" if integer else "seconds > 0"
        pytest.fail(f"env {name}: expected {kind}, got {raw!r}", pytrace=False)
    return value


@pytest.fixture
def fuzz_budget() -> Budget:
    """The fuzz budget from `ETLPLUS_FUZZ_BUDGET_S` / `ETLPLUS_FUZZ_EXAMPLES` (bad values fail in
    one line)."""
    return Budget(
        seconds=_env_number("ETLPLUS_FUZZ_BUDGET_S", 20.0, integer=False),
        examples=int(_env_number("ETLPLUS_FUZZ_EXAMPLES", 100, integer=True)),
    )


# -- one fuzz run: send, classify, remember --------------------------------------------------------


def _send(api: EtlClient, method: str, path: str, body: Any, ctype: str) -> httpx.Response:
    headers = {"Content-Type": ctype} if ctype else {}
    content: bytes | None = None
    if body is not None:
        kind, value = body
        content = value if kind == "raw" else json.dumps(value).encode()
    return api.request(method, path, content=content, headers=headers)


def _snippet(resp: httpx.Response, limit: int = 60) -> str:
    """`text/html '<html>...'`: the content type and the start of the body, on one line."""
    ctype = resp.headers.get("content-type", "no content-type").split(";")[0]
    try:
        text = resp.text
    except UnicodeDecodeError:
        text = "<binary>"
    text = " ".join(text.split())
    text = _printable(text)
    if not text:
        return f"{ctype}, empty body"
    return f"{ctype} {json.dumps(text[:limit] + ('...' if len(text) > limit else ''))}"


ERROR_SHAPE = 'the contract JSON error body {"status": "error", "code": "...", ...}'


def _violations(resp: httpx.Response) -> list[tuple[str, str, str]]:
    """(kind, expected, got) for every way `resp` breaks contract section 2."""
    if resp.status_code >= 500:
        return [
            ("5xx", "a 2xx-4xx answer to bad input", f"HTTP {resp.status_code}, {_snippet(resp)}")
        ]
    if resp.status_code < 400 or resp.request.method == "HEAD":
        return []
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        return [("error body not JSON", ERROR_SHAPE, _snippet(resp))]
    if not (
        isinstance(body, dict)
        and body.get("status") == "error"
        and isinstance(body.get("code"), str)
    ):
        return [("error body not the contract's", ERROR_SHAPE, _snippet(resp))]
    return []


@dataclass
class Finding:
    """One distinct violation (kind, status, route): the first request that showed it, and how
    many did."""

    kind: str
    route: str
    status: int
    expected: str
    got: str
    curl: str
    count: int = 1

    def line(self) -> str:
        """The one line a person reads."""
        times = f", {self.count} requests" if self.count > 1 else ""
        return (
            f"{self.kind}: {self.route} answered HTTP {self.status}{times}: expected "
            f"{self.expected}, got {self.got}; Reproduce with: {_one_line(self.curl)}"
        )


class StopFuzzing(Exception):
    """Ends hypothesis's run at once (it has no time limit of its own): the fuzz test raises it
    from the example, catches it around the call, and judges what was collected. With shrinking
    off and quiet verbosity hypothesis just re-raises it, printing nothing."""


@dataclass
class FuzzRun:
    """The state one fuzz test keeps across hypothesis's examples (see the module docstring)."""

    api: EtlClient
    budget: Budget
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    findings: dict[tuple[str, int, str], Finding] = field(default_factory=dict)
    error: TargetError | None = None  # the first request that got no answer
    error_at: float = 0.0
    #: the curl line of the last answered request (the one before a hang on a reused connection)
    last_curl: str = ""
    out_of_time: bool = False

    def stopped(self) -> bool:
        """Whether the run is over: a request got no answer, or the time budget is spent."""
        if self.error is not None or self.out_of_time:
            return True
        self.out_of_time = time.monotonic() - self.started >= self.budget.seconds
        return self.out_of_time

    def send(self, route: str, method: str, path: str, body: Any, ctype: str) -> None:
        """Send one generated request and classify its answer; `StopFuzzing` once the run is
        over (stays raised for every later example, so hypothesis's replay of the example
        that raised it agrees)."""
        if self.stopped():
            raise StopFuzzing
        self.sent += 1
        try:
            resp = _send(self.api, method, path, body, ctype)
        except TargetError as exc:
            self.error, self.error_at = exc, time.monotonic() - self.started
            raise StopFuzzing from None
        self.last_curl = self.api.curl(resp)
        for kind, expected, got in _violations(resp):
            key = (kind, resp.status_code, route)
            if key in self.findings:
                self.findings[key].count += 1
            else:
                self.findings[key] = Finding(
                    kind, route, resp.status_code, expected, got, self.api.curl(resp)
                )
        self._cancel_created_job(resp)

    def _cancel_created_job(self, resp: httpx.Response) -> None:
        """A generated body that happened to be a valid job: do not leave it running."""
        if resp.status_code not in (200, 201) or resp.request.method != "POST":
            return
        if resp.request.url.path != "/api/jobs":
            return
        try:
            job_id = resp.json().get("job_id") or resp.json().get("jobId")
        except (ValueError, AttributeError):
            return
        if isinstance(job_id, str):
            try:
                self.api.put(f"/api/jobs/{quote(job_id, safe='')}", json={"status": "cancelled"})
            except TargetError as exc:
                self.error, self.error_at = exc, time.monotonic() - self.started

    def _still_answers(self) -> bool:
        try:
            self.api.get("/api/health", timeout=min(PROBE_TIMEOUT_S, self.api.timeout))
        except TargetError:
            return False
        return True

    def _no_answer_line(self, more: bool) -> str:
        """The line for the request that got no answer; raises it as the `TargetError` it is
        when the target answers nothing any more and nothing else was found (the run's health
        view then groups it under its cause)."""
        assert self.error is not None
        where = f"request {self.sent}, {self.error_at:.1f} s into the fuzzing"
        first, _, rest = str(self.error).partition("\n")
        first, rest = _printable(first)[:MAX_WHAT], _one_line(rest)
        if self._still_answers():
            if "keep-alive" in first:  # the client already told a hang on a reused connection
                prefix = "Reproduce with: curl "
                if self.last_curl and rest.startswith(prefix):
                    # curl reuses its connection for the URL after --next, as the client did
                    rest = f"{prefix}{_one_line(self.last_curl)[5:]} --next {rest[len(prefix) :]}"
                return f"keep-alive hang: {first} ({where}) {rest}"
            return (
                f"dropped connection: {first} ({where}; a fresh connection answers: this request "
                f"broke its connection while the target stays up) {rest}"
            )
        if not more:
            if getattr(self.error, "kind", "") == "blocked":
                raise self.error
            raise TargetError(
                f"the target stopped answering during fuzzing: {first} ({where}; a fresh "
                f"connection to /api/health gets no answer either)\n{rest}".rstrip(),
                kind=getattr(self.error, "kind", ""),
            )
        return (
            f"the target stopped answering: {first} ({where}; a fresh connection to /api/health "
            f"gets no answer either) {rest}"
        )

    def verdict(self, expect: Expect) -> None:
        """Print what was done; raise one `CheckFailed` (or `TargetError`) for everything found."""
        elapsed = time.monotonic() - self.started
        ended = (
            "stopped by a request that got no answer"
            if self.error is not None
            else f"time budget of {self.budget.seconds:g} s spent"
            if self.out_of_time
            else "example budget done"
        )
        print(
            f"measured fuzzing: {self.sent} requests in {elapsed:.1f} s ({ended}; budget "
            f"{self.budget.seconds:g} s, {self.budget.examples} examples), "
            f"{len(self.findings)} distinct contract violations"
        )
        lines = [_printable(f.line()) for f in self.findings.values()]
        if self.error is not None:
            lines.insert(0, self._no_answer_line(bool(lines)))
        if not lines:
            return
        shown = lines[:MAX_LINES]
        if len(lines) > MAX_LINES:
            shown.append(f"... and {len(lines) - MAX_LINES} more distinct violations")
        raise CheckFailed(
            check=expect.check,
            what=f"{_plural(len(lines), 'distinct contract violation')} in "
            f"{_plural(self.sent, 'fuzzed request')}",
            expected="a 2xx-4xx answer with the contract JSON error body for every bad input, "
            "and an answer on every connection",
            got="\n          ".join(f"{i}. {line}" for i, line in enumerate(shown, 1)),
            items=expect.items,
        )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _one_line(curl: str) -> str:
    """A curl line whose quoted body has control characters, on one line: each such character
    leaves the single quotes for a bash ANSI-C escape (``'a'$'\\n''b'`` is ``a``, newline, ``b``),
    so the line still reproduces the request byte for byte."""
    out = []
    for c in curl:
        if c.isprintable():
            out.append(c)
        else:
            code = ord(c)
            out.append(f"'$'\\x{code:02x}''" if code < 0x80 else f"'$'\\u{code:04x}''")
    return "".join(out)


def _printable(text: str) -> str:
    """`text` with control characters (an ESC from a generated path, say) shown as `?`, so that
    no generated byte reaches a terminal or a report raw; newlines are kept."""
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


def _route(template: str) -> str:
    """The route of a generated path for deduplication: its template, `*` for the segments (the
    query string is not part of it: the curl line of each finding shows the one it had)."""
    return template.replace("{}", "*")


# -- the checks ------------------------------------------------------------------------------------


def test_malformed_requests_never_give_5xx(
    etl_api: EtlClient, etl_expect: Expect, fuzz_budget: Budget
) -> None:
    """Validate error handling and reporting: arbitrary methods, paths, query strings and bodies
    get a 2xx-4xx answer with the contract error body, on a connection that stays up."""
    run = FuzzRun(etl_api, fuzz_budget)

    @fuzz_budget.settings()
    @given(method=methods, path=paths, body=bodies, ctype=content_types)
    def fuzz(method: str, path: tuple[str, str], body: Any, ctype: str) -> None:
        template, target = path
        if unquote(target.partition("?")[0]).startswith(EXCLUDED):
            return
        run.send(_route(template), method, target, body, ctype)

    with contextlib.suppress(StopFuzzing):
        fuzz()
    run.verdict(etl_expect)


def test_malformed_job_bodies_never_give_5xx(
    etl_api: EtlClient, etl_expect: Expect, fuzz_budget: Budget
) -> None:
    """Validate error handling and reporting: wrong field types in job bodies get 4xx, never 5xx."""
    run = FuzzRun(etl_api, fuzz_budget)

    @fuzz_budget.settings()
    @given(
        fields=job_fields,
        extra=st.dictionaries(text_values, json_values, max_size=3),
        method=st.sampled_from(["POST", "PUT"]),
        job_id=segment,
    )
    def fuzz(fields: dict[str, Any], extra: dict[str, Any], method: str, job_id: str) -> None:
        route, path = (
            ("/api/jobs", "/api/jobs")
            if method == "POST"
            else ("/api/jobs/*", f"/api/jobs/{job_id}")
        )
        body = {**extra, **fields}
        run.send(route, method, path, ("json", body), "application/json")

    with contextlib.suppress(StopFuzzing):
        fuzz()
    run.verdict(etl_expect)


def test_unknown_methods_get_a_json_error(etl_api: EtlClient, etl_expect: Expect) -> None:
    """Validate error handling and reporting: unknown methods get a 4xx JSON error, not 5xx/drop."""
    problems, last_bad = [], None
    for path in ("/api/jobs", "/api/health"):
        for method in UNKNOWN_METHODS:
            resp = etl_api.request(method, path)
            try:
                body = resp.json()
            except ValueError:
                body = None
            json_error = isinstance(body, dict) and body.get("status") == "error"
            if resp.status_code >= 500 or resp.status_code < 400 or not json_error:
                ctype = resp.headers.get("content-type", "no content-type")
                problems.append(f"{method} {path}: HTTP {resp.status_code} {ctype}")
                last_bad = resp
    etl_expect.that(
        not problems,
        what=f"{len(UNKNOWN_METHODS)} unknown methods on /api/jobs and /api/health",
        expected="a 4xx answer with the contract JSON error body (405 METHOD_NOT_ALLOWED)",
        got=f"{len(problems)} bad: " + "; ".join(problems),
        resp=last_bad,
    )
