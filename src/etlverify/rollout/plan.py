"""A rollout plan: the staged flag rollout as steps, from TOML (`tomllib`) or the checklist's
default.

```toml
hold = "4h"                  # default hold of a step while the cohort judge runs
window = "60s"               # judge window (the hold is cut into windows of this length)
rate = 2.0                   # judge requests per second (inside and outside, interleaved)
on_regression = "continue"   # after a partial rollback: "continue" with the others, or "stop"

[[step]]
component = "logger"         # logger, exception, request_handler, websocket, concurrency, types
percent = 25
hold = "10m"                 # optional, this step's hold
checks = true                # run the component's checks after the flag is live
pause = false                # stop after this step until `etlverify rollout resume`
```
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from etlverify.contract import FLAG_BY_COMPONENT
from etlverify.durations import format_duration, parse_duration
from etlverify.errors import EtlVerifyError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DEFAULT_PLAN_TOML", "PlanError", "RolloutPlan", "Step", "load_plan", "parse_plan"]


class PlanError(EtlVerifyError):
    """A plan file that cannot be used; one line naming the file, the step and the field."""


@dataclass(frozen=True)
class Step:
    """Set `component`'s flag to `percent`, check, hold while judging, then act."""

    component: str
    percent: int
    hold_s: float
    checks: bool = True
    pause: bool = False

    @property
    def flag(self) -> str:
        """The component's feature flag."""
        return FLAG_BY_COMPONENT[self.component]

    def describe(self) -> str:
        """`request_handler -> 50% (hold 4 h, checks)`."""
        extra = ", checks" if self.checks else ""
        extra += ", then pause" if self.pause else ""
        return f"{self.component} -> {self.percent}% (hold {format_duration(self.hold_s)}{extra})"


@dataclass(frozen=True)
class RolloutPlan:
    """The steps and how the judge runs."""

    steps: tuple[Step, ...]
    window_s: float = 60.0
    rate_rps: float = 2.0
    on_regression: str = "continue"
    source: str = "default plan (the checklist's phases 2 and 3)"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (stored in the journal)."""
        return {
            "steps": [asdict(s) for s in self.steps],
            "window_s": self.window_s,
            "rate_rps": self.rate_rps,
            "on_regression": self.on_regression,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutPlan:
        """Inverse of `to_json()`."""
        return cls(
            steps=tuple(Step(**s) for s in data["steps"]),
            window_s=float(data["window_s"]),
            rate_rps=float(data["rate_rps"]),
            on_regression=str(data["on_regression"]),
            source=str(data.get("source", "")),
        )

    def total_hold_s(self) -> float:
        """The sum of the holds."""
        return sum(s.hold_s for s in self.steps)

    def compressed(self, hold_s: float | None, window_s: float | None) -> RolloutPlan:
        """The same plan with every hold (and the window) replaced: for tests and dry runs."""
        steps = self.steps
        if hold_s is not None:
            steps = tuple(Step(s.component, s.percent, hold_s, s.checks, s.pause) for s in steps)
        return RolloutPlan(
            steps=steps,
            window_s=window_s if window_s is not None else self.window_s,
            rate_rps=self.rate_rps,
            on_regression=self.on_regression,
            source=self.source,
        )


#: the checklist's phases 2 and 3: logger, exception system and request handler at 25% (each
#: checked), the three to 50% with the four-hour hold, the WebSocket manager, concurrency patterns
#: and type system each 25% then 100%, and the first three to 100%.
DEFAULT_PLAN_TOML = """
hold = "10m"
window = "60s"
rate = 2.0
on_regression = "continue"

[[step]]
component = "logger"
percent = 25
[[step]]
component = "exception"
percent = 25
[[step]]
component = "request_handler"
percent = 25

[[step]]
component = "logger"
percent = 50
hold = "4h"
[[step]]
component = "exception"
percent = 50
hold = "4h"
[[step]]
component = "request_handler"
percent = 50
hold = "4h"

[[step]]
component = "websocket"
percent = 25
[[step]]
component = "websocket"
percent = 100
[[step]]
component = "concurrency"
percent = 25
[[step]]
component = "concurrency"
percent = 100
[[step]]
component = "types"
percent = 25
[[step]]
component = "types"
percent = 100

[[step]]
component = "logger"
percent = 100
[[step]]
component = "exception"
percent = 100
[[step]]
component = "request_handler"
percent = 100
"""


def _duration(value: object, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value, where)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    raise PlanError(f'{where}: expected a duration such as "10m", got {value!r}')


def parse_plan(data: dict[str, Any], source: str) -> RolloutPlan:
    """Validate parsed TOML; `PlanError` names `source`, the step and the field."""
    known = {"hold", "window", "rate", "on_regression", "step"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlanError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    hold = _duration(data.get("hold", "10m"), f"{source}: hold")
    window = _duration(data.get("window", "60s"), f"{source}: window")
    rate = data.get("rate", 2.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 200:
        raise PlanError(f"{source}: rate: expected requests per second in (0, 200], got {rate!r}")
    on_regression = data.get("on_regression", "continue")
    if on_regression not in ("continue", "stop"):
        raise PlanError(
            f"{source}: on_regression: expected continue or stop, got {on_regression!r}"
        )
    raw_steps = data.get("step")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PlanError(f"{source}: no [[step]]: a plan needs at least one step")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps, 1):
        where = f"{source}: step {i}"
        if not isinstance(raw, dict):
            raise PlanError(f"{where}: expected a table")
        bad = sorted(set(raw) - {"component", "percent", "hold", "checks", "pause"})
        if bad:
            raise PlanError(f"{where}: unknown key {bad[0]!r}")
        component = raw.get("component")
        if component not in FLAG_BY_COMPONENT:
            known_c = ", ".join(FLAG_BY_COMPONENT)
            raise PlanError(f"{where}: component: expected one of {known_c}, got {component!r}")
        percent = raw.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise PlanError(f"{where}: percent: expected an integer 0-100, got {percent!r}")
        step_hold = _duration(raw["hold"], f"{where}: hold") if "hold" in raw else hold
        for key in ("checks", "pause"):
            if key in raw and not isinstance(raw[key], bool):
                raise PlanError(f"{where}: {key}: expected true or false, got {raw[key]!r}")
        steps.append(
            Step(
                component=str(component),
                percent=percent,
                hold_s=step_hold,
                checks=bool(raw.get("checks", True)),
                pause=bool(raw.get("pause", False)),
            )
        )
    return RolloutPlan(
        steps=tuple(steps),
        window_s=window,
        rate_rps=float(rate),
        on_regression=str(on_regression),
        source=source,
    )


def load_plan(path: Path | None) -> RolloutPlan:
    """The plan in `path` (TOML), or the default plan."""
    if path is None:
        return parse_plan(tomllib.loads(DEFAULT_PLAN_TOML), "default plan")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: invalid TOML: {exc}") from None
    return parse_plan(data, str(path))
