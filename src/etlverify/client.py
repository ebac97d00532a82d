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

__all__ = [
    "CheckFailed",
    "EtlClient",
    "EtlVerifyError",
    "Expect",
    "RequestTiming",
    "SettingsError",
    "TargetError",
    "curl_for",
    "excerpt",
    "redact",
]

EXCERPT_CHARS = 500
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
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
        """Send one request; any HTTP status is returned, transport failures raise `TargetError`."""
        limit = self.timeout if timeout is None else timeout
        request = self._http.build_request(
            method,
            path,
            json=json,
            content=content,
            headers=headers,
            params=params,
            timeout=httpx.Timeout(limit),
        )
        try:
            return self._http.send(request)
        except httpx.TimeoutException as exc:
            raise self._transport_error(request, f"no response within {limit:g} s", exc) from None
        except httpx.ConnectError as exc:
            raise self._transport_error(
                request, f"connection failed: {_reason(exc)}", exc
            ) from None
        except httpx.RemoteProtocolError as exc:
            raise self._transport_error(
                request, f"connection dropped or broken response: {_reason(exc)}", exc
            ) from None
        except httpx.TransportError as exc:
            raise self._transport_error(request, f"transport error: {_reason(exc)}", exc) from None

    def _transport_error(self, request: httpx.Request, what: str, exc: Exception) -> TargetError:
        return TargetError(
            f"{request.method} {request.url.path}: {what} ({type(exc).__name__})\n"
            f"Reproduce with: {self.curl(request)}"
        )

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
            raise TargetError(
                f"{response.request.method} {response.request.url.path}: expected a JSON body, got "
                f"{self.excerpt(response)}\nReproduce with: {self.curl(response)}"
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

    def __enter__(self) -> EtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]


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
            raise self.fail(
                f"{resp.request.method} {resp.request.url.path} did not answer JSON",
                expected="a JSON body",
                got=resp.headers.get("content-type", "no content-type"),
                resp=resp,
            ) from None

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
