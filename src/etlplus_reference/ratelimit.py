"""Fixed-window rate limiting per client and route prefix (contract section 6).

A request falls under the rule with the longest prefix matching its path; its client is the peer
address, or the first `X-Forwarded-For` entry when the peer is a trusted proxy (load tests give each
virtual user its own identity that way). Windows are aligned to multiples of `window_s` since the
epoch, so `X-RateLimit-Reset` is the same for every client.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request under one rule."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # unix seconds when the window ends
    retry_after: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The X-RateLimit-* headers (and Retry-After when refused)."""
        out = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset).encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(self.retry_after).encode()))
        return out


class RateLimiter:
    """Counters per (client, rule prefix) for the current window; reconfigurable at runtime."""

    def __init__(
        self, *, enabled: bool, window_s: float, rules: dict[str, int], trusted: tuple[str, ...]
    ) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._window_start = 0.0
        self.refused = 0
        self.configure(enabled=enabled, window_s=window_s, rules=rules, trusted=trusted)

    def configure(
        self, *, enabled: bool, window_s: float, rules: dict[str, int], trusted: tuple[str, ...]
    ) -> None:
        """Apply (new) settings; counters of the current window survive."""
        self.enabled = enabled
        self.window_s = window_s
        # Longest prefix first, so the first match is the most specific rule.
        self._rules = sorted(rules.items(), key=lambda kv: len(kv[0]), reverse=True)
        nets = [ipaddress.ip_network(t, strict=False) for t in trusted]
        self._trusted_exact = {str(n.network_address) for n in nets if n.num_addresses == 1}
        self._trusted_nets = [n for n in nets if n.num_addresses > 1]

    def rule_for(self, path: str) -> tuple[str, int] | None:
        """The (prefix, limit) of the longest matching rule, or None."""
        for prefix, limit in self._rules:
            if path.startswith(prefix):
                return prefix, limit
        return None

    def _trusted(self, peer: str) -> bool:
        if peer in self._trusted_exact:
            return True
        if not self._trusted_nets:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted_nets)

    def client_id(self, peer: str, forwarded_for: str | None) -> str:
        """The client: first X-Forwarded-For entry behind a trusted proxy, else the peer."""
        if forwarded_for and self._trusted(peer):
            first = forwarded_for.split(",", 1)[0].strip()
            if first:
                return first[:100]
        return peer

    def check(self, client: str, path: str) -> Decision | None:
        """Count this request; None when no rule applies or limiting is off."""
        if not self.enabled:
            return None
        rule = self.rule_for(path)
        if rule is None:
            return None
        prefix, limit = rule
        now = time.time()
        start = now - (now % self.window_s)
        if start != self._window_start:
            # A new window: every counter starts again (fixed windows, not sliding).
            self._window_start = start
            self._counts.clear()
        key = (client, prefix)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        end = start + self.window_s
        reset = math.ceil(end)
        if count > limit:
            self.refused += 1
            return Decision(False, limit, 0, reset, max(1, math.ceil(end - now)))
        return Decision(True, limit, limit - count, reset, 0)
