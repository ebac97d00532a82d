"""The HTTP client of the suite, curl reproduction, and the failure builder.

`EtlClient` wraps `httpx.Client`: an explicit timeout on every request, a fresh `X-Correlation-ID`
per request, timing through `event_hooks`, the auth header when credentials are configured. It never
raises for an HTTP status (a 500 is something to check, not an accident); transport failures raise
`TargetError`. `Expect` turns a failed check into a `CheckFailed` with everything a person needs.

Exception tree (defined in `etlverify.errors`)::

    EtlVerifyError
    ├── SettingsError (ValueError)      bad setting, message names its source
    ├── TargetError                     refused / reset / timed out / not JSON / WS refused
    └── CheckFailed (AssertionError)    the target answered against the contract
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from etlverify.errors import CheckFailed, EtlVerifyError, SettingsError, TargetError
from etlverify.health import TargetHealth, health_for

__all__ = [
    "CheckFailed",
    "EtlClient",
    "EtlVerifyError",
    "Expect",
    "Pacing",
    "RequestTiming",
    "SettingsError",
    "TargetError",
    "curl_for",
    "excerpt",
    "not_json",
    "redact",
]

EXCERPT_CHARS = 500
#: how much of a body that is not JSON a failure quotes
_BODY_START = 60
#: request bodies longer than this are not inlined into curl lines
_CURL_BODY_MAX = 2000
_SECRET_KEYS = r"(?:token|access_token|refresh_token|password|secret|authorization|api_key)"
_JSON_SECRET = re.compile(rf'("{_SECRET_KEYS}"\s*:\s*)"(?:[^"\\]|\\.)*"', re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)(?!\$)[A-Za-z0-9._~+/=-]+")
_HEX_ID = re.compile(r"^[0-9a-fA-F]{8,32}$")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with token/password values, bearer tokens and the given literal secrets as ``***``."""
    text = _JSON_SECRET.sub(r'\1"***"', text)
    text = _BEARER.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:  # a 1-3 character "secret" would mangle ordinary text
            text = text.replace(secret, "***")
    return text


def excerpt(
    response: httpx.Response, secrets: Iterable[str | None] = (), limit: int = EXCERPT_CHARS
) -> str:
    """``HTTP 404 application/json: {...}`` with the body cut to `limit` characters and redacted."""
    ctype = response.headers.get("content-type", "no content-type").split(";")[0]
    try:
        body = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        body = "<body not readable>"
    body = redact(body.strip(), secrets)
    if len(body) > limit:
        body = body[:limit] + f"... ({len(response.content)} bytes)"
    return (
        f"HTTP {response.status_code} {ctype}: {body}"
        if body
        else (f"HTTP {response.status_code} {ctype} (empty body)")
    )


def _header_arg(name: str, value: str, token_env_ref: str | None) -> str:
    if name.lower() == "authorization":
        if token_env_ref:
            # double quotes so the shell expands the variable: the secret never enters the report
            return f'-H "Authorization: Bearer {token_env_ref}"'
        scheme = value.split(" ", 1)[0] if " " in value else "Bearer"
        return "-H " + shlex.quote(f"Authorization: {scheme} ***")
    return "-H " + shlex.quote(f"{name}: {value}")


def curl_for(
    request: httpx.Request,
    *,
    timeout: float | None = None,
    token_env_ref: str | None = None,
    secrets: Iterable[str | None] = (),
) -> str:
    """A curl command line that repeats `request`, secrets redacted.

    The Authorization header becomes ``-H "Authorization: Bearer $ETLPLUS_TOKEN"`` when
    `token_env_ref` is given (the user's shell supplies the token), else ``Bearer ***``.
    """
    parts = ["curl", "-sS", "-i"]
    if timeout is not None:
        parts += ["-m", f"{timeout:g}"]
    if request.method != "GET":
        parts += ["-X", request.method]
    parts.append(shlex.quote(str(request.url)))
    skip = {"host", "content-length", "accept-encoding", "connection", "user-agent", "accept"}
    # raw keeps the header names' case as sent (items() lower-cases them)
    for raw_name, raw_value in request.headers.raw:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name.lower() in skip:
            continue
        parts.append(_header_arg(name, value, token_env_ref))
    try:
        body = request.content
    except httpx.RequestNotRead:
        body = b""
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and len(text) <= _CURL_BODY_MAX and "\x00" not in text:
            parts += ["--data-binary", shlex.quote(redact(text, secrets))]
        else:
            parts += ["--data-binary", f"@body.bin  # {len(body)}-byte body, not shown"]
    return " ".join(parts)


#: the longest a functional check waits for a rate-limit window to reset before retrying a 429
MAX_PACE_WAIT_S = 65.0
#: how often one request is retried after 429 answers
MAX_PACE_RETRIES = 2


@dataclass
class Pacing:
    """What the client had to pace for one route prefix (the target's rate limit)."""

    prefix: str
    limit: str = ""
    waits: int = 0
    seconds: float = 0.0
    refused: int = 0

    def line(self) -> str:
        """``/api/jobs: limit 30 per window; paced 3 times, 41.2 s waited``."""
        limit = f"limit {self.limit} per window" if self.limit else "rate limited"
        text = f"{self.prefix}: {limit}; paced {self.waits} time(s), {self.seconds:.1f} s waited"
        if self.refused:
            text += f", {self.refused} request(s) still answered 429"
        return text


def _prefix(path: str) -> str:
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    return "/" + "/".join(parts[:2])


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds until the rate-limit window resets, from ``Retry-After`` or ``X-RateLimit-Reset``."""
    raw = response.headers.get("retry-after")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    reset = response.headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class RequestTiming:
    """One request as the timing hook saw it."""

    method: str
    path: str
    status: int
    seconds: float
    correlation_id: str


class EtlClient:
    """HTTP client for one ETL Plus target; see the module docstring.

    `get/post/put/delete/request` return the `httpx.Response` whatever its status, and raise
    `TargetError` (with a curl line) when no response arrived.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        token_env_ref: str | None = None,
        secrets: Sequence[str | None] = (),
        transport: httpx.BaseTransport | None = None,
        max_timings: int = 10_000,
        health: TargetHealth | None = None,
        pace: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        #: the run's view of the target (shared by every client of this URL in the process)
        self.health = health if health is not None else health_for(self.base_url)
        #: wait for the target's rate-limit window instead of failing on 429 (functional checks)
        self.pace = pace
        #: shared by every client of this target in the process (the run reports it once)
        self.pacing: dict[str, Pacing] = self.health.pacing
        #: the status of the last answer when it was an error (a reused connection may hang)
        self._last_error: int | None = None
        #: prefix -> monotonic time before which the window has no request left
        self._exhausted_until: dict[str, float] = {}
        self.token = token
        self.token_env_ref = token_env_ref if token else None
        self.secrets: tuple[str, ...] = tuple(s for s in (*secrets, token) if s)
        self.timings: deque[RequestTiming] = deque(maxlen=max_timings)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
        )

    # -- hooks: the one place that stamps and times requests ------------------------------------

    def _on_request(self, request: httpx.Request) -> None:
        if "x-correlation-id" not in request.headers:
            request.headers["X-Correlation-ID"] = uuid.uuid4().hex[:16]
        if self.token and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.token}"
        request.extensions["etlverify_start"] = time.perf_counter()

    def _on_response(self, response: httpx.Response) -> None:
        start = response.request.extensions.get("etlverify_start")
        seconds = time.perf_counter() - start if isinstance(start, float) else 0.0
        self.timings.append(
            RequestTiming(
                response.request.method,
                response.request.url.path,
                response.status_code,
                seconds,
                response.request.headers.get("x-correlation-id", ""),
            )
        )

    # -- requests ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int | float] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; any HTTP status is returned, transport failures raise `TargetError`.

        Requests are not sent while the target's health says it is down (`TargetBlocked`, at
        once); with `pace`, a 429 is waited out (``Retry-After``) and retried, and a route whose
        window is used up (``X-RateLimit-Remaining: 0``) waits for ``X-RateLimit-Reset`` first.
        """
        limit = self.timeout if timeout is None else timeout
        prefix = _prefix(path)
        for attempt in range(MAX_PACE_RETRIES + 1):
            if self.pace:
                self._wait_for_window(prefix)
            request = self._http.build_request(
                method,
                path,
                json=json,
                content=content,
                headers=headers,
                params=params,
                timeout=httpx.Timeout(limit),
            )
            response = self._send(request, limit)
            if not self.pace or response.status_code != 429 or attempt == MAX_PACE_RETRIES:
                if self.pace and response.status_code == 429:
                    self._pacing(prefix, response).refused += 1
                return response
            wait = _retry_after(response, time.time())
            if wait is None or wait > MAX_PACE_WAIT_S:
                self._pacing(prefix, response).refused += 1
                return response
            response.close()
            self._pause(prefix, response, wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pacing(self, prefix: str, response: httpx.Response) -> Pacing:
        pacing = self.pacing.setdefault(prefix, Pacing(prefix))
        pacing.limit = response.headers.get("x-ratelimit-limit", pacing.limit)
        return pacing

    def _pause(self, prefix: str, response: httpx.Response, wait: float) -> None:
        pacing = self._pacing(prefix, response)
        pacing.waits += 1
        pacing.seconds += wait + 0.05
        time.sleep(wait + 0.05)

    def _wait_for_window(self, prefix: str) -> None:
        until = self._exhausted_until.pop(prefix, None)
        if until is None:
            return
        wait = until - time.monotonic()
        if 0 < wait <= MAX_PACE_WAIT_S:
            pacing = self.pacing.setdefault(prefix, Pacing(prefix))
            pacing.waits += 1
            pacing.seconds += wait
            time.sleep(wait)

    def _note_window(self, response: httpx.Response) -> None:
        remaining = response.headers.get("x-ratelimit-remaining")
        if remaining is None or remaining.strip() not in ("0", "0.0"):
            return
        wait = _retry_after(response, time.time())
        if wait is not None and wait > 0:
            prefix = _prefix(response.request.url.path)
            self._pacing(prefix, response)
            self._exhausted_until[prefix] = time.monotonic() + wait + 0.05

    def _send(self, request: httpx.Request, limit: float) -> httpx.Response:
        """Send through the health view: blocked at once while the target is down; a request that
        gets no answer is reported to it (which probes, to tell a dead target from a slow route)."""
        health = self.health
        what = f"{request.method} {request.url.path}"
        health.before_request(what)
        new_connection = False

        def trace(name: str, info: Mapping[str, Any]) -> None:
            nonlocal new_connection
            if name == "connection.connect_tcp.started":
                new_connection = True
                health.on_connection()

        request.extensions["trace"] = trace
        if health.fresh_connections:
            request.headers["Connection"] = "close"
        reused_after = self._last_error
        started, t0 = time.time(), time.perf_counter()
        key = id(request)
        health.in_flight[key] = (what, started)
        kind = text = ""
        try:
            response = self._http.send(request)
        except httpx.TimeoutException:
            kind, text = "timeout", f"no response within {limit:g} s"
        except httpx.ConnectError as exc:
            refused = _reason(exc) == "connection refused"
            kind = "refused" if refused else "dropped"
            text = f"connection failed: {_reason(exc)}"
        except httpx.RemoteProtocolError as exc:
            kind, text = "dropped", f"connection dropped or broken response: {_reason(exc)}"
        except httpx.TransportError as exc:
            kind, text = "dropped", f"transport error: {_reason(exc)}"
        finally:
            health.in_flight.pop(key, None)
        if kind:
            self._last_error = None
            event = health.on_no_answer(
                what,
                kind,
                started=started,
                reused_after_error=None if new_connection else reused_after,
            )
            message = f"{what}: {text}"
            if event is not None and event.kind.value == "keepalive-hang":
                message = (
                    f"{what}: {text} on a keep-alive connection reused after an HTTP "
                    f"{reused_after} answer (a fresh connection answers)"
                )
            raise TargetError(
                f"{message}\nReproduce with: {self.curl(request)}", kind=kind
            ) from None
        health.on_answer(
            time.perf_counter() - t0, what, response.status_code, created_job(request, response)
        )
        self._last_error = response.status_code if response.status_code >= 400 else None
        if self.pace:
            self._note_window(response)
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET `path` (see `request`)."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST `path` (see `request`)."""
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        """PUT `path` (see `request`)."""
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        """DELETE `path` (see `request`)."""
        return self.request("DELETE", path, **kwargs)

    def json(self, response: httpx.Response) -> Any:
        """The JSON body of `response`; `TargetError` when it is not JSON (a check needed it)."""
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            what, _ = not_json(response)
            raise TargetError(
                f"{what}: expected a JSON body\nReproduce with: {self.curl(response)}",
                kind="not-json",
            ) from None

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET `path` and return its JSON body (any status); `TargetError` when it is not JSON."""
        return self.json(self.get(path, **kwargs))

    def curl(self, response_or_request: httpx.Response | httpx.Request) -> str:
        """The curl line that repeats a request (secrets redacted)."""
        request = (
            response_or_request.request
            if isinstance(response_or_request, httpx.Response)
            else response_or_request
        )
        return curl_for(
            request, timeout=self.timeout, token_env_ref=self.token_env_ref, secrets=self.secrets
        )

    def excerpt(self, response: httpx.Response) -> str:
        """A redacted, truncated excerpt of `response` for a failure message."""
        return excerpt(response, self.secrets)

    def set_token(self, token: str | None) -> None:
        """Use `token` for every later request (e.g. after a login)."""
        self.token = token
        if token:
            self.secrets = (*self.secrets, token)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __repr__(self) -> str:
        return f"EtlClient({self.base_url!r})"

    def __enter__(self) -> EtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    if "refused" in text.lower():
        return "connection refused"
    if not text:
        return "no details given"
    return text.splitlines()[0][:200]


def created_job(request: httpx.Request, response: httpx.Response) -> str:
    """The id of the job a ``POST .../api/jobs`` created ("" for any other request or answer)."""
    if (
        request.method != "POST"
        or not request.url.path.endswith("/api/jobs")
        or response.status_code not in (200, 201)
    ):
        return ""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    job = body.get("job_id") if isinstance(body, dict) else None
    return str(job)[:80] if isinstance(job, str | int) else ""


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(_type_name(t) for t in expected)
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        dict: "object",
        list: "array",
        type(None): "null",
    }.get(expected, expected.__name__)


def not_json(response: httpx.Response) -> tuple[str, str]:
    """(what, got) for an answer whose body is not JSON: a body that *says* JSON in its
    Content-Type and is not is worded as such, with its first bytes either way."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip() or "none"
    raw = response.content[:_BODY_START]
    start = " ".join(raw.decode("utf-8", errors="replace").split())
    more = "..." if len(response.content) > _BODY_START else ""
    body = f"body `{start}{more}`" if start else "an empty body"
    where = f"{response.request.method} {response.request.url.path}"
    if "json" in ctype.lower():
        begins = f"it starts `{start}{more}`" if start else "it is empty"
        return (
            f"{where} sent Content-Type {ctype} but its body is not valid JSON ({begins})",
            f"Content-Type {ctype} with {body} (not valid JSON)",
        )
    return (
        f"{where} did not answer JSON (Content-Type {ctype}, {body})",
        f"Content-Type {ctype}, {body}",
    )


def _json_type(value: Any) -> str:
    return _type_name(type(value)) if value is not None else "null"


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        # JSON true is not a number, even though bool subclasses int in Python
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)


class Expect:
    """The failure builder: each method checks one thing and raises `CheckFailed` if it is wrong.

    `check` names the test (or the check) and `items` are the checklist items a failure blocks.
    """

    def __init__(
        self, client: EtlClient | None, *, check: str = "", items: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.check = check
        self.items = tuple(items)

    def fail(
        self, what: str, *, expected: Any = "", got: Any = "", resp: httpx.Response | None = None
    ) -> CheckFailed:
        """A `CheckFailed` for this test (returned, so callers write ``raise expect.fail(...)``)."""
        excerpt_text = curl = ""
        if resp is not None:
            if self.client is not None:
                excerpt_text, curl = self.client.excerpt(resp), self.client.curl(resp)
            else:
                excerpt_text, curl = excerpt(resp), curl_for(resp.request)
        return CheckFailed(
            check=self.check,
            what=what,
            expected=_show(expected) if expected != "" else "",
            got=_show(got) if got != "" else "",
            items=self.items,
            excerpt=excerpt_text,
            curl=curl,
        )

    def that(
        self,
        cond: object,
        what: str = "condition",
        expected: Any = "",
        got: Any = "",
        resp: httpx.Response | None = None,
    ) -> None:
        """Fail with `what`, `expected` and `got` unless `cond` is true."""
        if not cond:
            raise self.fail(what, expected=expected, got=got, resp=resp)

    def status(self, resp: httpx.Response, expected: int | Collection[int]) -> httpx.Response:
        """Check the HTTP status (one code or any of several); returns `resp` for chaining."""
        wanted = {expected} if isinstance(expected, int) else set(expected)
        if resp.status_code not in wanted:
            shown = " or ".join(str(s) for s in sorted(wanted))
            raise self.fail(
                f"{resp.request.method} {resp.request.url.path} answered HTTP {resp.status_code}",
                expected=f"HTTP {shown}",
                got=f"HTTP {resp.status_code}",
                resp=resp,
            )
        return resp

    def json_body(self, resp: httpx.Response) -> Any:
        """The JSON body, or a failure saying it is not JSON."""
        try:
            return resp.json()
        except (ValueError, UnicodeDecodeError):
            what, got = not_json(resp)
            raise self.fail(what, expected="a JSON body", got=got, resp=resp) from None

    def json_fields(
        self, resp: httpx.Response, fields: Mapping[str, type | tuple[type, ...]]
    ) -> dict[str, Any]:
        """Check that the body is a JSON object with `fields` of the given types; returns the body.

        A dotted name (``"build.commit"``) reaches into nested objects. Every problem is reported
        together.
        """
        body = self.json_body(resp)
        where = f"{resp.request.method} {resp.request.url.path}"
        if not isinstance(body, dict):
            raise self.fail(
                f"{where} body is not a JSON object",
                expected="a JSON object",
                got=_json_type(body),
                resp=resp,
            )
        problems: list[str] = []
        for name, typ in fields.items():
            found, value = _lookup(body, name)
            if not found:
                problems.append(f"{name} missing")
            elif not _is_instance(value, typ):
                problems.append(f"{name} is {_json_type(value)} {_show(value)[:60]}")
        if problems:
            raise self.fail(
                f"{where} body fields",
                expected=", ".join(f"{n}: {_type_name(t)}" for n, t in fields.items()),
                got="; ".join(problems),
                resp=resp,
            )
        return body

    def error_body(
        self, resp: httpx.Response, status: int, code: str | Collection[str]
    ) -> dict[str, Any]:
        """Check a contract error response (section 2): status, JSON body with ``status: error``,
        the symbolic `code`, a message, an 8-32 hex ``correlationId`` and a timestamp."""
        self.status(resp, status)
        body = self.json_fields(
            resp,
            {"status": str, "code": str, "message": str, "correlationId": str, "timestamp": str},
        )
        codes = {code} if isinstance(code, str) else set(code)
        where = f"{resp.request.method} {resp.request.url.path}"
        self.that(
            body["status"] == "error",
            f"{where} error body status",
            expected="error",
            got=body["status"],
            resp=resp,
        )
        self.that(
            body["code"] in codes,
            f"{where} error code",
            expected=" or ".join(sorted(codes)),
            got=body["code"],
            resp=resp,
        )
        self.that(
            bool(_HEX_ID.match(body["correlationId"])),
            f"{where} correlationId format",
            expected="8-32 hex characters",
            got=body["correlationId"],
            resp=resp,
        )
        return body


def _lookup(body: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    current: Any = body
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current
