"""Root cause first: a run's failures folded into its primary findings.

Each failed check leaves a `FailureFact` (what kind of failure, one sentence, when, and the target
health event it is tied to, if any; the pytest plugin records them). `diagnose` turns the facts into
`Cause`s, the run's *primary findings*, in the order a release manager should read them:

1. what happened to the target itself, and refusals that kept a whole section from running,
   earliest first: it stopped answering, its process went away (with its last moments: the last
   requests it answered, how long before the first failure, the last ERROR/FATAL lines of its log
   when the deployment folder is known), its WebSocket handshake never completes, it hangs on a
   reused keep-alive connection; a request every check of a section needs
   was refused ("job creation refused: POST /api/jobs answered 400 ...; the performance section (8
   checks) could not run"). The checks that failed only because of it (blocked, cut off by the same
   event, or in the blocked section) are counted under it, not repeated;
2. error bodies that are not JSON, checks the target's rate limiter refused, checks that lost
   their connection, and checks that got an HTTP answer they could not go on from (each one
   cause, with every check behind it). An HTTP answer is never filed as a lost connection: the
   target answered;
3. every contract violation found while the target answered, one line each (expected/got and a
   curl line stay in the check's own evidence);
4. checks that ran out of time, and internal errors of the suite.

Plain data in, plain data out: the same function serves the terminal, summary.json and the report.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "SECTION_BLOCKED",
    "Cause",
    "FailureFact",
    "answer_text",
    "diagnose",
    "findings_of",
    "http_answer",
    "refusal_text",
]

#: failure kinds tied to the target's health (see `etlverify.health.EventKind`)
HEALTH_KINDS = ("gone", "not-answering", "ws-handshake", "keepalive-hang")
#: the event kind of a refused request that a whole section needs (one finding for the section)
SECTION_BLOCKED = "section-blocked"
_QUERY = re.compile(r"https?://[^\s']*\?")
#: the failure kinds a check can have
KINDS = (
    "blocked",
    "transport",
    "http",
    "contract",
    "not-json",
    "rate-limited",
    SECTION_BLOCKED,
    "timeout",
    "error",
)
#: what a refused request is, for people
_REQUESTS = {"POST /api/jobs": "job creation", "POST /api/auth/login": "login"}
#: ``POST /api/jobs answered 400 '<body>'`` (the request optional), or a client excerpt
#: ``HTTP 400 application/json: <body>``; not "... after an HTTP 400 answer", which is about a
#: connection that hung afterwards
_ANSWERED = re.compile(
    r"(?:(?P<method>GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (?P<path>/\S*?):? )?"
    r"answered (?:HTTP )?(?P<status>[1-5]\d\d)\b[ :]*(?P<body>.*)"
)
_EXCERPT = re.compile(
    r"(?<!after an )\bHTTP (?P<status>[1-5]\d\d) (?:[\w.+-]+/[\w.+-]+|no content-type)"
    r"(?::\s*(?P<body>.*))?"
)
#: the error code and message of a JSON error body (its quotes escaped inside a repr, or not)
_CODE = re.compile(r'\\?"(?:code|error)\\?"\s*:\s*\\?"([\w.-]+)')
_MESSAGE = re.compile(r'\\?"message\\?"\s*:\s*\\?"(.{1,160}?)(?:\\?"|$)')


def http_answer(text: str) -> dict[str, Any] | None:
    """The HTTP answer a failure message reports: request, status, error code and message (each
    when known), or None when the message is not about an answer (a lost connection, a timeout).
    """
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    match = _ANSWERED.search(line) or _EXCERPT.search(line)
    if match is None:
        return None
    groups = match.groupdict()
    body = groups.get("body") or ""
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    method, path = groups.get("method"), groups.get("path")
    return {
        "request": f"{method} {path}" if method and path else "",
        "status": int(groups["status"]),
        "code": code.group(1) if code else "",
        "message": message.group(1) if message else "",
    }


def answer_text(answer: Mapping[str, Any]) -> str:
    """``POST /api/jobs answered 400 validation_error (target_config: unknown sink)``."""
    request = str(answer.get("request") or "")
    text = f"{request} answered " if request else "answered "
    text += f"{answer.get('status')}" + (f" {answer['code']}" if answer.get("code") else "")
    return text + (f" ({answer['message']})" if answer.get("message") else "")


def refusal_text(answer: Mapping[str, Any]) -> str:
    """``job creation refused: POST /api/jobs answered 400 validation_error (...)``."""
    request = str(answer.get("request") or "")
    what = _REQUESTS.get(request, request or "a request")
    return f"{what} refused: {answer_text(answer)}"


@dataclass(frozen=True)
class FailureFact:
    """One failed check, classified (`kind` in `KINDS`)."""

    nodeid: str
    check: str
    kind: str
    line: str
    at: float = 0.0
    #: the health event (``etlverify.health.Event.to_json()``) the failure is tied to
    event: Mapping[str, Any] | None = None
    items: tuple[str, ...] = ()
    #: how to reproduce it (a curl line), when there is one
    curl: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (carried in a test report's user_properties)."""
        return {
            "nodeid": self.nodeid,
            "check": self.check,
            "kind": self.kind,
            "line": self.line,
            "at": round(self.at, 3),
            "event": dict(self.event) if self.event else None,
            "items": list(self.items),
            "curl": self.curl,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailureFact:
        """Inverse of `to_json`."""
        event = data.get("event")
        return cls(
            nodeid=str(data.get("nodeid", "")),
            check=str(data.get("check", "")),
            kind=str(data.get("kind", "error")),
            line=str(data.get("line", "")),
            at=float(data.get("at") or 0.0),
            event=dict(event) if isinstance(event, dict) else None,
            items=tuple(str(i) for i in data.get("items") or ()),
            curl=str(data.get("curl") or ""),
        )


@dataclass(frozen=True)
class Cause:
    """One primary finding: a sentence, the check that first showed it, every check behind it."""

    kind: str
    sentence: str
    first_check: str = ""
    at: str = ""
    #: node ids of the checks that failed because of it (the first one included)
    checks: tuple[str, ...] = ()
    #: one line per check where each check is its own evidence (contract violations)
    lines: tuple[str, ...] = ()
    items: tuple[str, ...] = field(default_factory=tuple)

    @property
    def consequences(self) -> int:
        """How many checks failed because of this, besides the one that found it."""
        return max(0, len(self.checks) - 1)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (summary.json's ``primary_findings``)."""
        return {
            "kind": self.kind,
            "sentence": self.sentence,
            "first_check": self.first_check,
            "at": self.at,
            "checks": list(self.checks),
            "consequences": self.consequences,
            "lines": list(self.lines),
            "items": list(self.items),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cause:
        """Inverse of `to_json`."""
        return cls(
            kind=str(data.get("kind", "")),
            sentence=str(data.get("sentence", "")),
            first_check=str(data.get("first_check", "")),
            at=str(data.get("at", "")),
            checks=tuple(str(c) for c in data.get("checks") or ()),
            lines=tuple(str(c) for c in data.get("lines") or ()),
            items=tuple(str(c) for c in data.get("items") or ()),
        )


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "?"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else ""


def _event_key(event: Mapping[str, Any]) -> tuple[str, float]:
    return str(event.get("kind", "")), float(event.get("at_epoch") or 0.0)


def _health_sentence(event: Mapping[str, Any], facts: Sequence[FailureFact]) -> str:
    kind = str(event.get("kind", ""))
    at = _clock(float(event.get("at_epoch") or 0.0))
    check = str(event.get("check") or "the run")
    requests = int(event.get("requests") or 0)
    connections = int(event.get("connections") or 0)
    later = sum(1 for f in facts if f.check != event.get("check"))
    then = f"; {later} later check(s) could not run" if later else ""
    last = _last_moments(event)
    if kind == "gone":
        return (
            f"the target stopped accepting connections at {at}, during {check}: its process "
            f"exited or closed its port (connection refused){last}{then}"
        )
    if kind == "not-answering":
        return (
            f"the target stopped answering at {at} after {requests} requests over {connections} "
            f"connections, first seen in {check} (a fresh connection gets no answer either: "
            f"connections are not released or the server is stuck){last}{then}"
        )
    if kind == "ws-handshake":
        return (
            f"the WebSocket handshake on /ws never completes (HTTP still answers), first seen in "
            f"{check} at {at}{then}"
        )
    return (
        f"the target hangs on a reused keep-alive connection after an error response (a fresh "
        f"connection answers), first seen in {check} at {at}: the suite went on with a fresh "
        f"connection per request{then}"
    )


def _last_moments(event: Mapping[str, Any]) -> str:
    """``. Last moments: ...; its log's last ERROR/FATAL lines: ...`` (empty when unknown)."""
    text = ""
    moments = str(event.get("moments") or "")
    if moments:
        text += f". Last moments: {moments}"
    log = [str(line) for line in event.get("log") or ()]
    if log:
        text += f". The last ERROR/FATAL lines of its log: {' | '.join(log)}"
    return text


def _section_sentence(event: Mapping[str, Any], facts: Sequence[FailureFact]) -> str:
    n = len({f.nodeid for f in facts})
    section = str(event.get("section") or "a")
    return (
        f"{refusal_text(event)}; the {section} section ({n} check{'s' if n != 1 else ''}) "
        "could not run"
    )


def _http_sentence(group: Sequence[FailureFact]) -> str:
    counts: dict[str, int] = {}
    for fact in group:
        answer = http_answer(fact.line) or {}
        key = f"HTTP {answer.get('status', '?')}" + (
            f" {answer['code']}" if answer.get("code") else ""
        )
        counts[key] = counts.get(key, 0) + 1
    answers = ", ".join(f"{key} x{n}" if n > 1 else key for key, n in counts.items())
    return (
        f"{len(group)} check(s) got an HTTP answer they could not go on from ({answers}; "
        f"first in {group[0].check})"
    )


def _with_curl(fact: FailureFact) -> str:
    return f"{fact.check}: {fact.line}" + (f" -- {fact.curl}" if fact.curl else "")


def _group(kind: str, template: str, group: Sequence[FailureFact]) -> Cause:
    """One finding for several checks that failed the same way (`template`: {n}, {first})."""
    return Cause(
        kind=kind,
        sentence=template.format(n=len(group), first=group[0].check),
        first_check=group[0].check,
        at=_iso(group[0].at),
        checks=_unique([f.nodeid for f in group]),
        lines=_unique([_with_curl(f) for f in group]),
        items=_unique([i for f in group for i in f.items]),
    )


def _unique(lines: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(lines))


def diagnose(facts: Sequence[FailureFact]) -> tuple[Cause, ...]:
    """The primary findings of a run from its failed checks (order: see the module docstring)."""
    facts = sorted(facts, key=lambda f: f.at)
    causes: list[Cause] = []
    by_event: dict[tuple[str, float], list[FailureFact]] = {}
    events: dict[tuple[str, float], Mapping[str, Any]] = {}
    rest: list[FailureFact] = []
    for fact in facts:
        event = fact.event
        if event and str(event.get("kind")) in (*HEALTH_KINDS, SECTION_BLOCKED):
            key = _event_key(event)
            by_event.setdefault(key, []).append(fact)
            events.setdefault(key, event)
        elif fact.kind == "transport" and http_answer(fact.line) is not None:
            # filed as a lost connection by an older classifier: the target answered
            rest.append(replace(fact, kind="http"))
        else:
            rest.append(fact)
    for key in sorted(by_event, key=lambda k: k[1]):
        event, tied = events[key], by_event[key]
        blocked_section = key[0] == SECTION_BLOCKED
        causes.append(
            Cause(
                kind=key[0],
                sentence=_section_sentence(event, tied)
                if blocked_section
                else _health_sentence(event, tied),
                first_check=str(event.get("check") or (tied[0].check if tied else "")),
                at=_iso(key[1]),
                checks=_unique([f.nodeid for f in tied]),
                # the checks of a blocked section say nothing the sentence does not
                lines=_unique(
                    [f"{f.check}: {f.line}" for f in tied if f.kind not in ("blocked", key[0])]
                ),
                items=_unique([i for f in tied for i in f.items]),
            )
        )
    with_query = [f for f in rest if f.kind in ("contract", "not-json") and _QUERY.search(f.curl)]
    if len(with_query) >= 2 and sum("400" in f.line for f in with_query) * 2 >= len(with_query):
        rest = [f for f in rest if f not in with_query]
        causes.append(
            _group(
                "query-string",
                "requests with a query string are refused: {n} check(s) whose request carried "
                "one failed, most with HTTP 400 (first in {first})",
                with_query,
            )
        )
    grouped = {
        "not-json": "error bodies are not JSON: {n} check(s) got a body that is not the "
        "contract's JSON (first in {first})",
        "rate-limited": "the target's rate limiter refused {n} check(s) with 429 although the "
        "suite paces itself (first in {first}): exempt the suite's client or raise the limits",
        "transport": "{n} check(s) lost their connection or got no answer while the target "
        "otherwise answered (first in {first})",
    }
    for kind, template in grouped.items():
        group = [f for f in rest if f.kind == kind]
        if group:
            causes.append(_group(kind, template, group))
    answered = [f for f in rest if f.kind == "http"]
    if answered:
        causes.append(replace(_group("http", "", answered), sentence=_http_sentence(answered)))
    seen: set[str] = set()
    for kind in ("contract", "timeout", "error", "blocked"):
        for fact in (f for f in rest if f.kind == kind):
            sentence = f"{fact.check}: {fact.line}"
            if kind == "error":
                sentence = f"{fact.check}: the check itself broke: {fact.line}"
            # parametrised variants failing the same way are one finding
            dedupe = f"{kind}:{fact.line}"
            if dedupe in seen:
                for i, cause in enumerate(causes):
                    if cause.kind == kind and cause.lines and cause.lines[0].endswith(fact.line):
                        causes[i] = Cause(
                            kind=cause.kind,
                            sentence=cause.sentence,
                            first_check=cause.first_check,
                            at=cause.at,
                            checks=(*cause.checks, fact.nodeid),
                            lines=cause.lines,
                            items=_unique([*cause.items, *fact.items]),
                        )
                        break
                continue
            seen.add(dedupe)
            causes.append(
                Cause(
                    kind=kind,
                    sentence=sentence,
                    first_check=fact.check,
                    at=_iso(fact.at),
                    checks=(fact.nodeid,),
                    lines=(sentence, f"Reproduce with: {fact.curl}") if fact.curl else (sentence,),
                    items=fact.items,
                )
            )
    return tuple(causes)


def findings_of(causes: Sequence[Cause]) -> dict[str, list[int]]:
    """node id -> the numbers (1-based) of the primary findings that check is part of."""
    out: dict[str, list[int]] = {}
    for number, cause in enumerate(causes, 1):
        for nodeid in cause.checks:
            out.setdefault(nodeid, []).append(number)
    return out
