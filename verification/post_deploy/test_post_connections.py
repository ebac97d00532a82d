"""Post-deployment performance validation: connection hygiene, as evidence of its own.

Checklist "2. Performance Validation / Test concurrent user load". A target that serves every
request of a short check can still fail its users: it may never release a connection (after a
fixed number of connections every later request hangs), or hang when a client reuses a keep-alive
connection after an error answer (which every pooled client and load balancer does). Both are
cheap to prove here and expensive to diagnose from the symptoms they cause in every later check,
so each check stops at the first hang and names it: the connection number, or the reused socket.

The checks speak HTTP/1.1 through `http.client`, one connection at a time, so that what a
connection is and when it is reused is decided here and not by a pool. Every connect and read has a
short timeout (a healthy target answers its health route in milliseconds). Knobs (environment):
`ETLPLUS_CONNECTIONS` (fresh connections to open, default 300), `ETLPLUS_CONNECTION_TIMEOUT_S`
(per connect / per read, default 2), `ETLPLUS_CONNECTIONS_BUDGET_S` (the whole sequence, default
30).
"""

from __future__ import annotations

import http.client
import os
import shlex
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from etlverify.errors import CheckFailed, TargetError
from etlverify.health import health_for

if TYPE_CHECKING:
    from etlverify.client import Expect

ITEM = "post.2_performance_validation.concurrent_user_load"

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.functional,
    pytest.mark.heavy,
    pytest.mark.checklist(ITEM),
]

HEALTH = "/api/health"
#: a route no ETL Plus has: its answer is the contract's 404 NOT_FOUND
UNKNOWN = "/api/etlverify-no-such-route"
#: requests of the health route's rate-limit window left to the other checks (the uptime sampler
#: alone probes it twice a second)
RATE_LIMIT_RESERVE = 60
#: fewer fresh connections than this prove nothing about a pool: skip instead
MIN_CONNECTIONS = 20


def _env_number(name: str, default: float, *, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        kind = "a whole number > 0" if integer else "seconds > 0"
        pytest.fail(f"env {name}: expected {kind}, got {raw!r}", pytrace=False)
    return value


@dataclass(frozen=True)
class Knobs:
    """How many connections, and how long each connect/read and the whole sequence may take."""

    connections: int
    timeout_s: float
    budget_s: float


@pytest.fixture
def knobs() -> Knobs:
    """The connection checks' knobs from the environment (bad values fail in one line)."""
    return Knobs(
        connections=int(_env_number("ETLPLUS_CONNECTIONS", 300, integer=True)),
        timeout_s=_env_number("ETLPLUS_CONNECTION_TIMEOUT_S", 2.0),
        budget_s=_env_number("ETLPLUS_CONNECTIONS_BUDGET_S", 30.0),
    )


# -- one HTTP/1.1 exchange on a connection we control ---------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where the target listens, from its base URL (a path prefix is kept)."""

    base_url: str
    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        """The endpoint of `base_url` (http or https)."""
        parts = urlsplit(base_url.rstrip("/"))
        https = parts.scheme == "https"
        return cls(
            base_url.rstrip("/"),
            https,
            parts.hostname or "127.0.0.1",
            parts.port or (443 if https else 80),
            parts.path.rstrip("/"),
        )

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new, not yet opened, connection whose connect and reads time out after `timeout`."""
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def url(self, path: str) -> str:
        """The full URL of `path`."""
        return f"{self.base_url}{path}"


@dataclass(frozen=True)
class Exchange:
    """One request on one connection: its answer, or why there was none."""

    status: int | None
    seconds: float
    failure: str = ""  # a phrase that completes "connection 137 ..." / "the second request ..."
    kind: str = ""  # for the run's health view: timeout, refused or dropped
    closing: bool = False  # the answer said `Connection: close` (or was HTTP/1.0)
    ratelimit: dict[str, str] = field(default_factory=dict)
    started: float = 0.0  # wall clock

    @property
    def answered(self) -> bool:
        """A complete HTTP answer arrived (any status)."""
        return self.status is not None


class Prober:
    """Opens connections to one endpoint and tells the run's health view what happened, like the
    suite's own clients: a request is not sent while the target is known to be down
    (`TargetBlocked`), every connection is counted, and a request with no answer is reported
    (the view probes, so the run's root cause names this check and this connection count)."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.health = health_for(endpoint.base_url)

    def open(self, what: str) -> tuple[http.client.HTTPConnection, Exchange | None]:
        """A new, opened connection; or the closed one and why it could not be opened."""
        self.health.before_request(what)
        conn = self.endpoint.connection(self.timeout)
        self.health.on_connection()
        started = time.time()
        try:
            conn.connect()
        except TimeoutError:
            phrase = f"could not be opened within {self.timeout:g} s (the target no longer accepts)"
            return conn, Exchange(None, 0.0, phrase, "timeout", started=started)
        except ConnectionRefusedError:
            phrase = "was refused (the process is gone or no longer listens)"
            return conn, Exchange(None, 0.0, phrase, "refused", started=started)
        except ssl.SSLError as exc:
            phrase = f"failed its TLS handshake ({exc.reason or type(exc).__name__})"
            return conn, Exchange(None, 0.0, phrase, "dropped", started=started)
        except OSError as exc:
            phrase = f"could not be opened ({exc.strerror or type(exc).__name__})"
            return conn, Exchange(None, 0.0, phrase, "dropped", started=started)
        return conn, None

    def exchange(
        self, conn: http.client.HTTPConnection, path: str, *, reused: bool = False
    ) -> Exchange:
        """GET `path` on the open connection `conn` and read the whole answer."""
        if reused:
            self.health.before_request(f"GET {path}")
        started, t0 = time.time(), time.perf_counter()

        def failed(phrase: str, kind: str) -> Exchange:
            return Exchange(None, time.perf_counter() - t0, phrase, kind, started=started)

        try:
            conn.request("GET", path, headers={"X-Correlation-ID": uuid.uuid4().hex[:16]})
            resp = conn.getresponse()
            resp.read()
        except TimeoutError:
            return failed(f"got no answer within {self.timeout:g} s", "timeout")
        except http.client.RemoteDisconnected:
            phrase = "found the connection closed" if reused else "was closed without an answer"
            return failed(phrase, "dropped")
        except (ConnectionResetError, BrokenPipeError):
            return failed("found the connection reset" if reused else "was reset", "dropped")
        except http.client.NotConnected:
            return failed("found the connection closed", "dropped")
        except http.client.HTTPException as exc:
            return failed(f"got a broken HTTP answer ({type(exc).__name__})", "dropped")
        except OSError as exc:
            return failed(f"failed ({exc.strerror or type(exc).__name__})", "dropped")
        seconds = time.perf_counter() - t0
        self.health.on_answer(seconds)
        headers = {k.lower(): v for k, v in resp.getheaders()}
        limits = {k: v for k, v in headers.items() if k.startswith("x-ratelimit-")}
        return Exchange(resp.status, seconds, "", "", resp.will_close, limits, started)

    def no_answer(self, what: str, result: Exchange, *, reused_after: int | None = None) -> None:
        """Tell the health view that `what` got no answer."""
        self.health.on_no_answer(
            what, result.kind, started=result.started, reused_after_error=reused_after
        )

    def one_connection(self, path: str) -> Exchange:
        """Open a fresh connection, send one request, read the answer, close."""
        conn, failure = self.open(f"GET {path}")
        try:
            return failure or self.exchange(conn, path)
        finally:
            conn.close()

    def reuse(self, first_path: str, second_path: str) -> tuple[Exchange, Exchange | None]:
        """`GET first_path` then `GET second_path` on one keep-alive connection; the second
        exchange is None when the first answer closed the connection (`Connection: close`, as
        HTTP allows) or did not come."""
        conn, failure = self.open(f"GET {first_path}")
        try:
            if failure is not None:
                return failure, None
            first = self.exchange(conn, first_path)
            if not first.answered or first.closing:
                return first, None
            # never open a second connection behind our back: the point is to reuse this one
            conn.auto_open = 0
            return first, self.exchange(conn, second_path, reused=True)
        finally:
            conn.close()


def _statuses(counts: Counter[int]) -> str:
    return ", ".join(f"{n} x HTTP {s}" for s, n in sorted(counts.items())) or "none"


def _fail(etl_expect: Expect, what: str, *, expected: str, got: str, curl: str) -> CheckFailed:
    return CheckFailed(
        check=etl_expect.check,
        what=what,
        expected=expected,
        got=got,
        items=etl_expect.items,
        curl=curl,
    )


# -- the checks ------------------------------------------------------------------------------------


def _planned_connections(first: Exchange, wanted: int) -> tuple[int, str]:
    """How many connections to open, given the rate limit the first answer reported."""
    try:
        remaining = int(first.ratelimit.get("x-ratelimit-remaining", ""))
    except ValueError:
        return wanted, ""
    if remaining - RATE_LIMIT_RESERVE >= wanted - 1:
        return wanted, ""
    planned = max(remaining - RATE_LIMIT_RESERVE + 1, 0)
    limit = first.ratelimit.get("x-ratelimit-limit", "?")
    note = (
        f"{HEALTH} is rate limited ({limit} per window, {remaining} left): {planned} of {wanted} "
        f"connections opened, {RATE_LIMIT_RESERVE} requests left to the other checks"
    )
    if planned < MIN_CONNECTIONS:
        pytest.skip(
            f"{note}; fewer than {MIN_CONNECTIONS} prove nothing about connection release: rerun "
            "in a fresh rate-limit window or exempt the suite's address"
        )
    return planned, note


def test_fresh_connections_are_released(etl_target: Any, etl_expect: Expect, knobs: Knobs) -> None:
    """Concurrent user load: fresh connections opened one after another (well beyond any small
    pool), each with one `GET /api/health`, are all answered: the target releases connections."""
    endpoint = Endpoint.parse(etl_target.base_url)
    prober = Prober(endpoint, knobs.timeout_s)
    path, timeout = endpoint.prefix + HEALTH, knobs.timeout_s
    loop = (
        f"for i in $(seq 1 {knobs.connections}); do curl -sS -o /dev/null -m {timeout:g} "
        f'-w "$i %{{http_code}}\\n" {shlex.quote(endpoint.url(HEALTH))} || break; done'
    )
    first = prober.one_connection(path)
    if not first.answered:
        prober.no_answer(f"GET {path}", first)
        raise TargetError(
            f"GET {HEALTH} on a fresh connection: connection 1 {first.failure}; the target does "
            f"not answer at all, so connection release cannot be judged\n"
            f"Reproduce with: curl -sS -i -m {timeout:g} {shlex.quote(endpoint.url(HEALTH))}",
            kind=first.kind,
        )
    planned, note = _planned_connections(first, knobs.connections)
    counts: Counter[int] = Counter({first.status or 0: 1})
    slowest = first.seconds
    started = time.monotonic()
    number = 1
    while number < planned:
        if time.monotonic() - started > knobs.budget_s:
            spent = f"budget of {knobs.budget_s:g} s spent after {number} connections"
            note = f"{note}; {spent}" if note else spent
            break
        number += 1
        result = prober.one_connection(path)
        if not result.answered:
            prober.no_answer(f"GET {path} (fresh connection {number})", result)
            answered = number - 1
            raise _fail(
                etl_expect,
                f"the target stopped answering after {answered} connections (connection "
                f"{number} {result.failure}; connections are never released?)",
                expected=f"an answer on each of {planned} fresh connections opened one after "
                f"another (GET {HEALTH}, {timeout:g} s per connect and read)",
                got=f"connections 1-{answered} answered ({_statuses(counts)}, slowest "
                f"{slowest * 1000:.0f} ms); connection {number} {result.failure}",
                curl=loop,
            )
        counts[result.status or 0] += 1
        slowest = max(slowest, result.seconds)
    elapsed = time.monotonic() - started
    print(
        f"measured connections: {number} fresh connections answered in {elapsed:.2f} s "
        f"({_statuses(counts)}, slowest {slowest * 1000:.0f} ms)" + (f"; {note}" if note else "")
    )


def _control(prober: Prober) -> str:
    """Whether reuse after a success works: tells an error-specific hang from broken reuse."""
    path = prober.endpoint.prefix + HEALTH
    try:
        first, second = prober.reuse(path, path)
    except TargetError:
        return "and now the target does not answer at all"
    if not first.answered:
        return f"and now a fresh connection {first.failure}"
    if second is None:
        return f"GET {HEALTH} closes its connection, so reuse after a success is not comparable"
    if second.answered:
        return (
            f"the same reuse after an HTTP {first.status} works: it is the error answer that "
            "breaks the connection"
        )
    return f"reuse after an HTTP {first.status} fails too: {second.failure}"


def test_keep_alive_connection_survives_an_error(
    etl_target: Any, etl_expect: Expect, knobs: Knobs
) -> None:
    """Concurrent user load: after an error answer (a 404 for an unknown route) the same
    keep-alive connection answers the next request, or the error says `Connection: close`."""
    endpoint = Endpoint.parse(etl_target.base_url)
    prober = Prober(endpoint, knobs.timeout_s)
    timeout = knobs.timeout_s
    unknown_url, health_url = endpoint.url(UNKNOWN), endpoint.url(HEALTH)
    curl = (
        f"curl -sS -i -m {timeout:g} {shlex.quote(unknown_url)} --next -sS -i -m {timeout:g} "
        f"{shlex.quote(health_url)}  # curl reuses the connection for the second URL"
    )
    first, second = prober.reuse(endpoint.prefix + UNKNOWN, endpoint.prefix + HEALTH)
    if not first.answered:
        prober.no_answer(f"GET {endpoint.prefix + UNKNOWN}", first)
        raise TargetError(
            f"GET {UNKNOWN} on a fresh connection {first.failure}; the target does not answer "
            f"at all, so keep-alive reuse cannot be judged\n"
            f"Reproduce with: curl -sS -i -m {timeout:g} {shlex.quote(unknown_url)}",
            kind=first.kind,
        )
    if second is None:
        print(
            f"measured keep-alive: GET {UNKNOWN} answered HTTP {first.status} with "
            "`Connection: close`; the client opens a new connection, as HTTP allows"
        )
        return
    if second.answered:
        print(
            f"measured keep-alive: after HTTP {first.status} for GET {UNKNOWN}, GET {HEALTH} on "
            f"the same connection answered HTTP {second.status} in {second.seconds * 1000:.0f} ms"
        )
        return
    what_sent = f"GET {endpoint.prefix + HEALTH}"
    prober.no_answer(what_sent, second, reused_after=first.status)
    if prober.health.down is not None:
        raise TargetError(
            f"{what_sent} on a keep-alive connection after an HTTP {first.status} "
            f"{second.failure}, and the target no longer answers a fresh connection either\n"
            f"Reproduce with: {curl}",
            kind=second.kind,
        )
    cause = _control(prober)
    closed = second.kind == "dropped"
    what = (
        f"the target closed a keep-alive connection after an HTTP {first.status} without "
        "`Connection: close`"
        if closed
        else f"the second request on a keep-alive connection after an HTTP {first.status} "
        f"{second.failure}"
    )
    raise _fail(
        etl_expect,
        what,
        expected=f"GET {HEALTH} answered on the connection that carried GET {UNKNOWN} "
        f"(HTTP {first.status}), or `Connection: close` on that error answer",
        got=f"the second request {second.failure} ({cause})",
        curl=curl,
    )
