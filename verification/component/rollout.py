"""Shared helpers of the component rollout suites (checklist phases 2 and 3).

The exposure rule is contract section 7: a flag is active for a user when it is on and the user's
FNV-1a bucket is below the rollout percentage. The bucket is computed here, independently of the
target, and compared with what the target says (`GET /api/flags/users/{id}` and the
`X-Feature-Flags` header), for single users exactly and for a sample statistically.

Nothing here imports the plugin: the helpers take the fixtures' objects (`etl_api`, `etl_expect`,
`etl_flags`) as arguments and stay plain Python.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from etlverify.contract import (
    CODE_STATUS,
    CORRELATION_ID_RE,
    ERROR_FIELDS,
    FLAG_BY_COMPONENT,
    FLAG_NAMES,
    KNOWN_BUCKETS,
    fnv1a_bucket,
)
from etlverify.contract import LOG_LEVELS as LEVELS
from etlverify.contract import TERMINAL_STATUSES as TERMINAL
from etlverify.contract import (
    TEXT_LOG_LINE_RE as TEXT_LINE_RE,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "CODE_STATUS",
    "ERROR_FIELDS",
    "FLAG_BY_COMPONENT",
    "FLAG_NAMES",
    "KNOWN_BUCKETS",
    "LEVELS",
    "TERMINAL",
    "TEXT_LINE_RE",
    "ExposureReport",
    "LogWatcher",
    "RolloutChecker",
    "check_latency_impact",
    "check_partial_rollback",
    "deadline_loop",
    "error_body_problems",
    "expected_active",
    "exposed_user",
    "fnv1a_bucket",
    "has_cid",
    "helper_self_check",
    "is_iso8601",
    "line_has_correlation_id",
    "median",
    "new_job_id",
    "parse_log_line",
    "percentile",
    "request_counters",
    "resolve_log_file",
    "sample_user_ids",
    "subscribe_clean",
    "unexposed_user",
]

#: the user sample of the statistical exposure check; fixed so that a verdict is reproducible
_SAMPLE_PREFIX = "etlv-user-"


def helper_self_check() -> list[str]:
    """The known-value pairs where this helper disagrees with contract 7 (empty when fine)."""
    return [
        f"{uid!r}: contract {want}, helper {fnv1a_bucket(uid)}"
        for uid, want in KNOWN_BUCKETS.items()
        if not math.isclose(fnv1a_bucket(uid), want, abs_tol=1e-9)
    ]


def sample_user_ids(n: int = 400) -> list[str]:
    """`n` generated user ids, the same on every run."""
    return [f"{_SAMPLE_PREFIX}{i:04d}" for i in range(n)]


def exposed_user(percent: float) -> str:
    """A sample user whose bucket is below `percent` (exposed once the flag is on)."""
    for uid in sample_user_ids():
        if fnv1a_bucket(uid) < percent:
            return uid
    raise ValueError(f"no sample user below {percent}%")


def unexposed_user(percent: float) -> str:
    """A sample user whose bucket is at or above `percent` (never exposed at that rollout)."""
    for uid in sample_user_ids():
        if fnv1a_bucket(uid) >= percent:
            return uid
    raise ValueError(f"no sample user at or above {percent}%")


def expected_active(doc: dict[str, Any], user_id: str) -> set[str]:
    """The flag names active for `user_id` under a flags document (the file's two maps)."""
    flags = doc.get("flags", {})
    rollout = doc.get("rollout_percentages", {})
    bucket = fnv1a_bucket(user_id)
    return {
        name for name, on in flags.items() if on is True and bucket < float(rollout.get(name, 0))
    }


def is_iso8601(value: object) -> bool:
    """True for an ISO-8601 date-time string (a trailing `Z` allowed)."""
    if not isinstance(value, str) or ("T" not in value and " " not in value):
        return False
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def deadline_loop(timeout: float, interval: float = 0.1) -> Iterable[float]:
    """Yield the remaining seconds until `timeout` has passed, sleeping `interval` between turns."""
    end = time.monotonic() + timeout
    first = True
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if not first:
            time.sleep(min(interval, max(0.0, end - now)))
        first = False
        yield end - time.monotonic()


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


@dataclass
class ExposureReport:
    """What one exposure check saw: the sample, the users the target exposes, and any mismatch."""

    flag: str
    percent: float
    sample: int
    exposed: int
    pvalue: float
    mismatches: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return 100.0 * self.exposed / self.sample if self.sample else math.nan


class RolloutChecker:
    """Sets a component's rollout through `etl_flags` and checks the target's exposure (FNV-1a).

    `api`, `expect` and `flags` are the `etl_api`, `etl_expect` and `etl_flags` fixtures.
    """

    def __init__(self, api: Any, expect: Any, flags: Any, *, workers: int = 8) -> None:
        self.api = api
        self.expect = expect
        self.flags = flags
        self.workers = workers

    def set(self, flag: str, percent: int) -> dict[str, Any]:
        """Turn `flag` on at `percent` (waits for the hot reload) and return the flags document."""
        self.flags.set({flag: True}, {flag: percent})
        doc: dict[str, Any] = self.flags.read()
        return doc

    def enable(
        self, flag: str, percent: int, *, sample: int = 400, header_sample: int = 40
    ) -> ExposureReport:
        """`set` and then `check_exposure`."""
        self.set(flag, percent)
        return self.check_exposure(flag, percent, sample=sample, header_sample=header_sample)

    def _user_state(self, user_id: str) -> tuple[str, Any]:
        resp = self.api.get(f"/api/flags/users/{quote(user_id, safe='')}")
        return user_id, resp

    def check_exposure(
        self, flag: str, percent: float, *, sample: int = 400, header_sample: int = 40
    ) -> ExposureReport:
        """Check `flag`'s exposure at `percent` for the known users and a generated sample.

        Per user: the target's `bucket` equals FNV-1a's, `active[flag]` equals `bucket < percent`
        (and the flag being on), and `X-Feature-Flags` names exactly the flags active for that user
        under the current file. Over the sample: the exposed share is consistent with `percent`
        (two-sided binomial test, alpha 0.001).
        """
        from scipy.stats import binomtest

        problems = helper_self_check()
        self.expect.that(
            not problems,
            what="the suite's FNV-1a helper reproduces contract section 7's known buckets",
            expected="user1 64.51, user2 46.62, alice 63.25, bob 54.58, '' 56.03",
            got="; ".join(problems),
        )
        doc: dict[str, Any] = self.flags.read()
        flag_on = doc.get("flags", {}).get(flag) is True
        known = [uid for uid in KNOWN_BUCKETS if uid]
        generated = sample_user_ids(sample)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            answers = list(pool.map(self._user_state, known + generated))

        mismatches: list[str] = []
        exposed = 0
        for uid, resp in answers:
            self.expect.status(resp, 200)
            body = resp.json()
            self.expect.json_fields(resp, {"user_id": str, "bucket": (int, float), "active": dict})
            want_bucket = fnv1a_bucket(uid)
            got_bucket = body["bucket"]
            want_active = flag_on and want_bucket < percent
            got_active = body["active"].get(flag)
            if not isinstance(got_bucket, int | float) or not math.isclose(
                float(got_bucket), want_bucket, abs_tol=0.005
            ):
                mismatches.append(f"{uid}: bucket {got_bucket!r}, FNV-1a gives {want_bucket}")
            if got_active is not want_active:
                mismatches.append(
                    f"{uid} (bucket {want_bucket}): active[{flag}]={got_active!r}, "
                    f"expected {want_active}"
                )
            if uid in KNOWN_BUCKETS and not math.isclose(
                float(got_bucket), KNOWN_BUCKETS[uid], abs_tol=0.005
            ):
                mismatches.append(
                    f"{uid}: bucket {got_bucket!r}, contract says {KNOWN_BUCKETS[uid]}"
                )
            if uid.startswith(_SAMPLE_PREFIX) and got_active is True:
                exposed += 1

        p = min(max(percent / 100.0, 0.0), 1.0) if flag_on else 0.0
        pvalue = float(binomtest(exposed, len(generated), p).pvalue)
        report = ExposureReport(flag, percent, len(generated), exposed, pvalue, mismatches)
        self.expect.that(
            not mismatches,
            what=f"GET /api/flags/users/{{id}} follows the FNV-1a rule for {flag} at {percent:g}%",
            expected="for every user: target bucket == FNV-1a bucket, active == (bucket < percent)",
            got=f"{len(mismatches)} mismatches, first: " + "; ".join(mismatches[:5]),
        )
        self.expect.that(
            pvalue >= 0.001,
            what=f"share of sampled users exposed to {flag} matches the {percent:g}% rollout",
            expected=f"about {percent:g}% of {len(generated)} users (binomial test, alpha 0.001)",
            got=f"{exposed}/{len(generated)} = {report.share:.1f}% (p = {pvalue:.2g})",
        )
        self.check_header(doc, known + generated[:header_sample])
        return report

    def check_header(self, doc: dict[str, Any], user_ids: Sequence[str]) -> None:
        """`X-Feature-Flags` on a request with `X-User-Id` names exactly the user's active flags."""
        for uid in user_ids:
            resp = self.api.get("/api/health", headers={"X-User-Id": uid})
            self.expect.status(resp, 200)
            raw = resp.headers.get("X-Feature-Flags")
            want = expected_active(doc, uid)
            got = {part.strip() for part in (raw or "").split(",") if part.strip()}
            self.expect.that(
                raw is not None and got == want,
                what=f"X-Feature-Flags for X-User-Id {uid} (bucket {fnv1a_bucket(uid)})",
                expected=", ".join(sorted(want)) or "(empty header)",
                got="(no header)" if raw is None else (raw or "(empty header)"),
                resp=resp,
            )


def parse_log_line(line: str) -> dict[str, Any] | None:
    """A log line as `{"format", "timestamp", "level", "component", "message", "context"}`.

    TEXT context is the raw ` | k=v ...` tail as `{"raw": ...}` (the values may be quoted); None
    when the line is neither a contract TEXT line nor a contract JSON object.
    """
    m = TEXT_LINE_RE.match(line)
    if m:
        message, _, tail = m["message"].partition(" | ")
        return {
            "format": "TEXT",
            "timestamp": m["ts"],
            "level": m["level"],
            "component": m["component"],
            "message": message,
            "context": {"raw": tail},
        }
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if (
        set(obj) >= {"timestamp", "level", "component", "message", "context"}
        and is_iso8601(obj["timestamp"])
        and obj["level"] in LEVELS
        and isinstance(obj["component"], str)
        and isinstance(obj["message"], str)
        and isinstance(obj["context"], dict)
    ):
        return {"format": "JSON", **{k: obj[k] for k in obj}}
    return None


def line_has_correlation_id(line: str, correlation_id: str) -> bool:
    """True when a log line records `correlationId=<id>` (TEXT) or has it in its context (JSON)."""
    if f"correlationId={correlation_id}" in line:
        return True
    if correlation_id not in line:
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    ctx = obj.get("context") if isinstance(obj, dict) else None
    return isinstance(ctx, dict) and ctx.get("correlationId") == correlation_id


def has_cid(correlation_id: str) -> Callable[[str], bool]:
    """A predicate for `LogWatcher.wait_for`: the line records `correlation_id`."""

    def pred(line: str) -> bool:
        return line_has_correlation_id(line, correlation_id)

    return pred


class LogWatcher:
    """Reads the lines a log file gained since `mark()`, following size rotation (`.1`, `.2`, ...).

    Rotation renames the file, so the watcher remembers the inode and offset it started at and
    finds that inode again among the backups.
    """

    def __init__(self, path: Path, max_backups: int = 20) -> None:
        self.path = path
        self.max_backups = max_backups
        self._inode: int | None = None
        self._offset = 0

    def mark(self) -> None:
        """Start watching at the current end of the file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._inode, self._offset = None, 0
            return
        self._inode, self._offset = st.st_ino, st.st_size

    def chain(self) -> list[Path]:
        """The files, oldest first, holding lines since `mark()` (a rotated start file first)."""
        files = [Path(f"{self.path}.{i}") for i in range(self.max_backups, 0, -1)]
        files = [f for f in files if f.exists()] + [self.path]
        if self._inode is None:
            return files
        for i, f in enumerate(files):
            try:
                if f.stat().st_ino == self._inode:
                    return files[i:]
            except FileNotFoundError:
                continue
        return files

    def read_since_mark(self) -> bytes:
        """The raw bytes written since `mark()` across rotations."""
        out = b""
        for i, f in enumerate(self.chain()):
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                continue
            start = self._offset if i == 0 and self._inode is not None else 0
            if i == 0 and self._inode is not None and f.stat().st_ino != self._inode:
                start = 0
            out += data[start:]
        return out

    def lines(self) -> list[str]:
        """Complete lines written since `mark()` (a trailing partial line is left out)."""
        text = self.read_since_mark().decode("utf-8", "replace")
        parts = text.split("\n")
        return parts[:-1]

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str | None:
        """The first new line satisfying `pred`, polling until `timeout`; None when none came."""
        for _ in deadline_loop(timeout, 0.05):
            for line in self.lines():
                if pred(line):
                    return line
        return None


def resolve_log_file(deploy_root: Path) -> Path:
    """The server log of a deployment: `logging.log_file` of its config, else logs/etlplus.log."""
    rel = "logs/etlplus.log"
    try:
        cfg = json.loads((deploy_root / "config" / "config.json").read_text(encoding="utf-8"))
        value = cfg.get("logging", {}).get("log_file")
        if isinstance(value, str) and value:
            rel = value
    except (OSError, ValueError, AttributeError):
        pass
    p = Path(rel)
    return p if p.is_absolute() else deploy_root / p


def new_job_id(tag: str) -> str:
    """A fresh job id of this suite (`etlv_` prefix, as `etl_jobs` makes them), tagged."""
    import uuid

    return f"etlv_{tag}_{uuid.uuid4().hex[:12]}"


def _tail(proc: Any) -> str:
    text = f"{getattr(proc, 'stdout', '') or ''}\n{getattr(proc, 'stderr', '') or ''}".strip()
    return " | ".join(text.splitlines()[-3:]) or "(no output)"


def check_partial_rollback(
    rollout: RolloutChecker, ops: Any, expect: Any, deploy_root: Path, component: str
) -> None:
    """`rollback.sh partial <component>`: that flag off and at 0, every other flag untouched.

    All six flags are first turned on at distinct percentages so that "untouched" is visible;
    `etl_flags` restores the original file at teardown.
    """
    import hashlib

    flag = FLAG_BY_COMPONENT[component]
    percents = {name: 20 + 10 * i for i, name in enumerate(FLAG_NAMES)}
    rollout.flags.set(dict.fromkeys(FLAG_NAMES, True), percents)
    before: dict[str, Any] = rollout.flags.read()
    proc = ops.rollback("partial", component)
    expect.that(
        proc.returncode == 0,
        what=f"`deployment/rollback.sh partial {component}` succeeds",
        expected="exit code 0",
        got=f"exit code {proc.returncode}: {_tail(proc)}",
    )
    flags_file: Path = getattr(rollout.flags, "path", deploy_root / "config" / "feature_flags.json")
    rollout.flags.wait_loaded(hashlib.sha256(flags_file.read_bytes()).hexdigest())
    after: dict[str, Any] = rollout.flags.read()
    problems = []
    if after.get("flags", {}).get(flag) is not False:
        problems.append(f"flags.{flag} is {after.get('flags', {}).get(flag)!r}, not false")
    if after.get("rollout_percentages", {}).get(flag) != 0:
        problems.append(
            f"rollout_percentages.{flag} is {after.get('rollout_percentages', {}).get(flag)!r}"
        )
    for name in FLAG_NAMES:
        if name == flag:
            continue
        for key in ("flags", "rollout_percentages"):
            old, new = before.get(key, {}).get(name), after.get(key, {}).get(name)
            if old != new:
                problems.append(f"{key}.{name} changed {old!r} -> {new!r}")
    expect.that(
        not problems,
        what=f"partial rollback of {component} touches only {flag}",
        expected=f"{flag} false at 0%, the other five flags as before ({percents})",
        got="; ".join(problems),
    )
    # The target must serve the rolled-back file: nobody exposed to `flag`, the others as set.
    rollout.check_exposure(flag, 0, sample=100, header_sample=20)


def check_latency_impact(
    rollout: RolloutChecker,
    api: Any,
    expect: Any,
    record_metric: Callable[[str, object], None],
    flag: str,
    *,
    path: str,
    label: str,
    method: str = "GET",
    body: Any = None,
    ok: tuple[int, ...] = (200,),
    n: int = 150,
    percent: int = 25,
) -> dict[str, float]:
    """Latency of one request with `flag` off vs on; fails only on a gross, significant regression.

    Three samples of `n`: an exposed user before the flag is set ("before"), then, with the flag
    at `percent`, the exposed ("on") and an unexposed user ("control") interleaved so that drift
    hits both alike. A regression fails the check only when the median is more than 50% and more
    than 2 ms worse and a one-sided Mann-Whitney test gives p < 0.001; ratios are recorded as
    test properties either way.
    """
    from scipy.stats import mannwhitneyu

    user_on, user_off = exposed_user(percent), unexposed_user(percent)
    errors: list[str] = []

    def one(user: str) -> float:
        start = time.perf_counter()
        resp = api.request(method, path, json=body, headers={"X-User-Id": user})
        took = time.perf_counter() - start
        if resp.status_code not in ok:
            errors.append(f"{method} {path} as {user}: HTTP {resp.status_code}")
        return took

    for _ in range(10):  # warm-up: connections, caches
        one(user_on)
    before = [one(user_on) for _ in range(n)]
    rollout.set(flag, percent)
    for _ in range(10):
        one(user_on)
    on: list[float] = []
    control: list[float] = []
    for _ in range(n):
        on.append(one(user_on))
        control.append(one(user_off))
    expect.that(
        not errors,
        what=f"{method} {path} answers normally while measuring {flag}",
        expected=f"HTTP {'/'.join(map(str, ok))} for every request",
        got=f"{len(errors)} unexpected answers, first: {errors[:3]}",
    )
    med = {"before": median(before), "on": median(on), "control": median(control)}
    result = {f"{label}_median_ms_{k}": round(v * 1000, 3) for k, v in med.items()} | {
        f"{label}_ratio_on_vs_before": round(med["on"] / med["before"], 3),
        f"{label}_ratio_on_vs_control": round(med["on"] / med["control"], 3),
        f"{label}_p95_ms_on": round(percentile(on, 95) * 1000, 3),
    }
    for key, value in result.items():
        record_metric(key, value)
    for ref_name, ref in (("before", before), ("control", control)):
        ratio = med["on"] / med[ref_name]
        gross = ratio > 1.5 and med["on"] - med[ref_name] > 0.002 and n >= 100
        if gross:
            pvalue = float(mannwhitneyu(on, ref, alternative="greater").pvalue)
            expect.that(
                pvalue >= 0.001,
                what=f"{flag} at {percent}% costs no gross latency on {method} {path}",
                expected=f"median with the flag on at most 1.5x the {ref_name} median "
                "(or the difference under 2 ms / not significant)",
                got=f"median on {med['on'] * 1000:.2f} ms vs {ref_name} "
                f"{med[ref_name] * 1000:.2f} ms (x{ratio:.2f}, n={n}, Mann-Whitney p={pvalue:.2g})",
            )
    return result


_HEX_ID_RE = CORRELATION_ID_RE


def error_body_problems(resp: Any) -> list[str]:
    """Everything wrong with an error response's body by contract section 2 (empty when right).

    Exactly the six contract fields with their types, `status: error`, a code that belongs to the
    HTTP status, an 8-32 hex correlation id equal to the `X-Correlation-ID` header when there is
    one, an ISO-8601 timestamp, a JSON content type.
    """
    where = f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}"
    try:
        body = resp.json()
    except ValueError:
        return [f"{where}: body is not JSON: {resp.text[:120]!r}"]
    if not isinstance(body, dict):
        return [f"{where}: body is {type(body).__name__}, not an object"]
    problems = []
    ctype = resp.headers.get("content-type", "")
    if "json" not in ctype:
        problems.append(f"content-type {ctype!r}")
    if set(body) != set(ERROR_FIELDS):
        extra, missing = (
            sorted(set(body) - set(ERROR_FIELDS)),
            sorted(set(ERROR_FIELDS) - set(body)),
        )
        problems.append(f"fields: extra {extra}, missing {missing}")
    for name, typ in ERROR_FIELDS.items():
        if name in body and not isinstance(body[name], typ):
            problems.append(f"{name} is {type(body[name]).__name__}, not {typ.__name__}")
    if body.get("status") != "error":
        problems.append(f"status {body.get('status')!r}")
    code = body.get("code")
    if CODE_STATUS.get(str(code)) != resp.status_code:
        problems.append(f"code {code!r} does not belong to HTTP {resp.status_code}")
    cid = body.get("correlationId")
    if not isinstance(cid, str) or not _HEX_ID_RE.fullmatch(cid):
        problems.append(f"correlationId {cid!r} is not 8-32 hex characters")
    header = resp.headers.get("X-Correlation-ID")
    if header is not None and header != cid:
        problems.append(f"correlationId {cid!r} != X-Correlation-ID header {header!r}")
    if not is_iso8601(body.get("timestamp")):
        problems.append(f"timestamp {body.get('timestamp')!r} is not ISO-8601")
    return [f"{where}: {p}" for p in problems]


def request_counters(api: Any, expect: Any) -> tuple[int, int]:
    """(requests.total, requests.errors) from `/api/health/metrics`."""
    resp = expect.status(api.get("/api/health/metrics"), 200)
    body = expect.json_fields(resp, {"metrics.requests.total": int, "metrics.requests.errors": int})
    requests = body["metrics"]["requests"]
    return int(requests["total"]), int(requests["errors"])


def subscribe_clean(ws: Any, **kwargs: Any) -> dict[str, Any]:
    """Subscribe a `WsSession` and drop what arrived before the acknowledgement (old filter)."""
    ack: dict[str, Any] = ws.subscribe(**kwargs)
    ws.collect(until=None, timeout=0)
    return ack
