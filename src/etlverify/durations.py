"""Durations and times as every command spells them: `parse_duration` (`90s`, `30m`, `4h`,
`1h30m`, `2d`, `1w`, plain seconds), `format_duration` and `utc` (ISO-8601, seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_duration", "parse_duration", "utc"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, what: str) -> float:
    """`90s`, `30m`, `4h`, `2d`, `1w`, `1h30m` or plain seconds -> seconds (> 0).

    Raises ValueError with one line naming `what`.
    """
    raw = text.strip().lower()
    total, number = 0.0, ""
    try:
        if raw and raw.replace(".", "", 1).isdigit():
            total = float(raw)
        else:
            for ch in raw:
                if ch.isdigit() or ch == ".":
                    number += ch
                elif ch in _UNITS and number:
                    total += float(number) * _UNITS[ch]
                    number = ""
                else:
                    raise ValueError
            if number:
                raise ValueError
    except ValueError:
        raise ValueError(
            f"{what}: expected a duration such as 90s, 30m, 4h, 1h30m, 2d or 1w, got {text!r}"
        ) from None
    if not total > 0:
        raise ValueError(f"{what}: must be more than 0, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """`4h`, `1 h 12 m`, `3 m 5 s`, `42 s`."""
    s = round(max(0.0, seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes:
        parts.append(f"{minutes} m")
    if secs and not days and not hours:
        parts.append(f"{secs} s")
    return " ".join(parts) or "0 s"


def utc(ts: float) -> str:
    """ISO-8601 UTC, seconds."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
