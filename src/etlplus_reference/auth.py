"""Bearer-token authentication (contract section 5).

Tokens are random (`secrets.token_urlsafe`), live only in memory with an expiry, and die on logout
or restart. An expired token stays known for a while so that its holder gets TOKEN_EXPIRED
instead of UNAUTHORIZED. Neither tokens nor passwords are ever logged.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etlplus_reference.errors import ApiError
from etlplus_reference.passwords import verify_password

if TYPE_CHECKING:
    from etlplus_reference.config import AuthUser

__all__ = ["OPEN_PREFIXES", "Session", "TokenStore", "bearer_token", "is_open_path"]

#: routes that never need a token
OPEN_PREFIXES = ("/api/health", "/api/auth/login")
_EXPIRED_MEMORY_S = 24 * 3600.0  # how long an expired token is remembered as "expired"


@dataclass(frozen=True)
class Session:
    """What a valid token stands for."""

    user_id: str
    username: str
    roles: tuple[str, ...]
    expires_at: float


def is_open_path(path: str) -> bool:
    """True for the routes that stay open when authentication is on."""
    return path.startswith(OPEN_PREFIXES)


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; 401 UNAUTHORIZED when malformed."""
    if not header:
        raise ApiError("UNAUTHORIZED", "Missing Authorization header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise ApiError("UNAUTHORIZED", "Malformed Authorization header (expected 'Bearer <token>')")
    return token


class TokenStore:
    """Issued tokens and the users who may log in."""

    def __init__(self, users: dict[str, AuthUser], ttl_s: float) -> None:
        self.users = users
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self.logins = 0
        self.failed_logins = 0

    async def login(self, username: str, password: str) -> tuple[str, Session]:
        """Check credentials (PBKDF2 off the event loop) and issue a token; 401 when wrong."""
        user = self.users.get(username)
        # Verify even for unknown users against the same kind of hash, so timing tells nothing.
        encoded = user.password_hash if user is not None else _DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, encoded)
        if user is None or not ok:
            self.failed_logins += 1
            raise ApiError("UNAUTHORIZED", "Invalid username or password")
        self.logins += 1
        token = secrets.token_urlsafe(32)
        session = Session(user.user_id, user.username, user.roles, time.time() + self.ttl_s)
        self._sessions[token] = session
        self._prune()
        return token, session

    def check(self, token: str) -> Session:
        """The session for a token: 401 UNAUTHORIZED when unknown, TOKEN_EXPIRED when expired."""
        session = self._sessions.get(token)
        if session is None:
            raise ApiError("UNAUTHORIZED", "Invalid or revoked token")
        if session.expires_at <= time.time():
            raise ApiError("TOKEN_EXPIRED", "Token expired")
        return session

    def revoke(self, token: str) -> None:
        """Logout: the token is unknown from now on."""
        self._sessions.pop(token, None)

    @property
    def active(self) -> int:
        """Tokens issued and not yet expired."""
        now = time.time()
        return sum(1 for s in self._sessions.values() if s.expires_at > now)

    def _prune(self) -> None:
        if len(self._sessions) < 1024:
            return
        horizon = time.time() - _EXPIRED_MEMORY_S
        for token in [t for t, s in self._sessions.items() if s.expires_at < horizon]:
            del self._sessions[token]


_DUMMY_HASH = (
    "pbkdf2_sha256$20000$00000000000000000000000000000000$"
    "0000000000000000000000000000000000000000000000000000000000000000"
)
