"""Tolerance spec parsing: the grammar, its errors, and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from etlverify.baseline.spec import (
    DEFAULT_SPECS,
    SpecError,
    ToleranceSpec,
    parse_spec,
    parse_specs,
    resolve_spec,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p95:10%", ToleranceSpec("p95", relative_pct=10.0)),
        ("p99:15%,+2ms", ToleranceSpec("p99", 15.0, 2.0, "ms")),
        ("P99.9 : 5% , +500 us", ToleranceSpec("p99.9", 5.0, 500.0, "us")),
        ("throughput:-10%", ToleranceSpec("throughput", relative_pct=10.0)),
        ("throughput:10%", ToleranceSpec("throughput", relative_pct=10.0)),
        ("throughput:-10%,-5rps", ToleranceSpec("throughput", 10.0, 5.0, "rps")),
        ("error_rate:+1pp", ToleranceSpec("error_rate", absolute=1.0, unit="pp")),
        ("mean:+0.5ms", ToleranceSpec("mean", absolute=0.5, unit="ms")),
        ("max:20%,+1s", ToleranceSpec("max", 20.0, 1.0, "s")),
        (
            "p95@GET /api/jobs*:25%,+1ms",
            ToleranceSpec("p95", 25.0, 1.0, "ms", scope="GET /api/jobs*"),
        ),
    ],
)
def test_good_specs(text: str, expected: ToleranceSpec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment", "suggestion"),
    [
        ("p95:10", "has no unit", "p95:10%"),
        ("latency:10%", "unknown statistic 'latency'", "p95:10%"),
        ("avg:5%", "unknown statistic", "mean:5%"),
        ("thruput:-5%", "unknown statistic", "throughput:-5%"),
        ("p95:-10%", "points the wrong way", "p95:10%"),
        ("throughput:+10%", "points the wrong way", "throughput:-10%"),
        ("p95:+1pp", "unit 'pp' does not apply to p95", None),
        ("error_rate:+1ms", "unit 'ms' does not apply", "error_rate:+1pp"),
        ("mean:+2mss", "unit 'mss'", "mean:+2ms"),
        ("p95", "expected '<stat>:<tolerance>'", "p95:10%"),
        ("p95 10%", "expected '<stat>:<tolerance>'", "p95:10%"),
        ("p95=10%", "expected '<stat>:<tolerance>'", "p95:10%"),
        ("p101:5%", "outside (0, 100]", None),
        ("p95:10%,20%", "more than one relative bound", None),
        ("p95:+1ms,+2ms", "more than one absolute bound", None),
        ("p95:", "no tolerance", "p95:10%"),
        ("p95@:5%", "empty metric scope", "p95:5%"),
        ("p95:ten%", "cannot read bound", None),
        ("", "empty spec", None),
    ],
)
def test_bad_specs_raise_one_line_value_error(
    text: str, fragment: str, suggestion: str | None
) -> None:
    with pytest.raises(ValueError, match="invalid tolerance spec") as info:
        parse_spec(text)
    message = str(info.value)
    assert isinstance(info.value, SpecError)
    assert "\n" not in message
    assert fragment in message
    if suggestion:
        assert message.endswith(f"did you mean {suggestion!r}?")
    else:
        assert "did you mean" not in message


def test_fails_uses_relative_tolerance_raised_to_the_absolute_floor() -> None:
    spec = parse_spec("p95:10%,+1ms")
    assert spec.allowed_change(8.0) == pytest.approx(1.0)  # 10% = 0.8 ms < floor
    assert spec.allowed_change(50.0) == pytest.approx(5.0)
    assert not spec.fails(8.0, 8.9)
    assert spec.fails(8.0, 9.1)
    assert not spec.fails(50.0, 55.0)  # exactly at the limit is within
    assert spec.fails(50.0, 55.1)
    assert not spec.fails(50.0, 10.0)  # faster is never a failure
    assert parse_spec("p95:+500us").allowed_change(3.0) == pytest.approx(0.5)


def test_throughput_is_lower_is_worse() -> None:
    spec = parse_spec("throughput:-10%")
    assert spec.fails(100.0, 89.0)
    assert not spec.fails(100.0, 91.0)
    assert not spec.fails(100.0, 500.0)
    assert spec.describe() == "-10%"


def test_describe_and_canonical_text() -> None:
    spec = parse_spec(" p99 : 15% , +2 ms ")
    assert str(spec) == "p99:15%,+2ms"
    assert spec.describe() == "15% +2 ms"


def test_parse_specs_defaults_separators_and_last_match_wins() -> None:
    assert parse_specs(None) == DEFAULT_SPECS
    assert {s.stat for s in DEFAULT_SPECS} == {"p50", "p95", "p99", "throughput", "error_rate"}
    specs = parse_specs("p95:10%; p95@GET /api/health*:30%,+1ms;")
    assert len(specs) == 2
    assert resolve_spec(specs, "GET /api/jobs", "p95") == specs[0]
    assert resolve_spec(specs, "GET /api/health/live", "p95") == specs[1]
    assert resolve_spec(specs, "GET /api/jobs", "p99") is None
    assert parse_specs([specs[0], "p50:5%"])[1].stat == "p50"
    with pytest.raises(ValueError, match="no tolerance spec"):
        parse_specs(" ; ")


def _num(x: float) -> str:
    return str(np.format_float_positional(x, trim="-"))


_numbers = st.floats(
    min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
_stats = st.sampled_from(["p50", "p95", "p99", "p99.9", "mean", "max", "throughput", "error_rate"])
_scopes = st.none() | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzGETPOS /_{}*-.0123456789", min_size=1, max_size=20
).map(str.strip).filter(bool)


@st.composite
def _specs(draw: st.DrawFn) -> ToleranceSpec:
    stat = draw(_stats)
    units = {"throughput": ["rps", "/s"], "error_rate": ["pp"]}.get(stat, ["us", "ms", "s"])
    relative = draw(st.none() | _numbers)
    absolute = draw(_numbers if relative is None else st.none() | _numbers)
    unit = draw(st.sampled_from(units)) if absolute is not None else None
    return ToleranceSpec(stat, relative, absolute, unit, draw(_scopes))


@given(_specs())
def test_round_trip_spec_text_spec(spec: ToleranceSpec) -> None:
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text


@given(_stats, _numbers, _numbers)
def test_allowance_is_max_of_relative_and_floor(stat: str, rel: float, floor: float) -> None:
    unit = {"throughput": "rps", "error_rate": "pp"}.get(stat, "ms")
    sign = "-" if stat == "throughput" else "+"
    text = f"{stat}:{sign}{_num(rel)}%,{sign}{_num(floor)}{unit}".replace("+", "", 1)
    spec = parse_spec(text)
    assert spec.allowed_change(100.0) == pytest.approx(max(rel, floor))


def test_noise_floor_unit_sd() -> None:
    spec = parse_spec("p50:10%,+2sd")
    assert spec.noise_floor
    assert spec.absolute_value is None
    assert str(spec) == "p50:10%,+2sd"
    assert spec.describe() == "10% +2 sd"
    assert spec.allowed_change(5.0, noise_sd=0.1) == pytest.approx(0.5)  # 10% is larger
    assert spec.allowed_change(5.0, noise_sd=0.5) == pytest.approx(1.0)  # 2 sd is larger
    assert spec.allowed_change(5.0) == pytest.approx(0.5)  # no windows known: 10% only
    assert spec.fails(5.0, 6.1, noise_sd=0.5)
    assert not spec.fails(5.0, 5.9, noise_sd=0.5)
    assert parse_spec("throughput:-10%,-2sd").allowed_change(100.0, 8.0) == pytest.approx(16.0)
    with pytest.raises(ValueError, match="points the wrong way"):
        parse_spec("p95:-2sd")
