"""The sign-off report as a person sees it: headless Chromium (Debian's `chromium`), offline.

Chromium runs with a proxy that refuses everything and a resolver that resolves nothing, so any
external resource would fail to load; the report must not need one. A copy of the report gets a
probe script (the report itself has no script) that writes what is visible into the DOM, read
back with ``--dump-dom``; ``--screenshot`` checks the banner's colour.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from etlverify.report.signoff import write_signoff
from etlverify.report.summary import MetricRecord, TriggerRecord

from .conftest import ERRORS_ITEM, FAILURE, JOBS_ITEM, Run, make_summary, plot_series

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.report.summary import Summary

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # offline: no proxy answers, no name resolves
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
PROBE = """<script>
window.addEventListener("load", function () {
  function visible(el) { return !!el && el.offsetHeight > 0 && el.offsetWidth > 0; }
  var word = document.getElementById("verdict-word");
  var imgs = Array.prototype.map.call(document.querySelectorAll("img"), function (i) {
    return {src: i.src.slice(0, 22), w: i.naturalWidth, h: i.naturalHeight, shown: visible(i)};
  });
  var rows = Array.prototype.map.call(document.querySelectorAll("tr[data-item]"), function (r) {
    return {item: r.dataset.item, status: r.dataset.status, shown: visible(r),
            text: r.innerText.slice(0, 4000)};
  });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    verdict: word ? word.innerText : null, verdictShown: visible(word),
    banner: getComputedStyle(document.getElementById("verdict")).backgroundColor,
    imgs: imgs, rows: rows,
    failedDetailsOpen: Array.prototype.every.call(
      document.querySelectorAll("tr[data-status=failed] details"), function (d) { return d.open; })
  });
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def probe(tmp_path: Path, report: Path) -> dict[str, Any]:
    """What Chromium shows of `report` (through a probe copy)."""
    copy = tmp_path / f"probe-{report.name}"
    copy.write_text(report.read_text().replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = _chromium(tmp_path, "--dump-dom", copy.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert match, proc.stderr[-2000:]
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    data: dict[str, Any] = json.loads(text.replace("&amp;", "&"))
    return data


def screenshot(tmp_path: Path, report: Path) -> Any:
    """A 1280x1000 screenshot of `report`, as an RGB(A) array."""
    from matplotlib.image import imread

    png = tmp_path / f"{report.stem}.png"
    proc = _chromium(tmp_path, "--window-size=1280,1000", f"--screenshot={png}", report.as_uri())
    assert png.exists(), proc.stderr[-2000:]
    return imread(png)


def assert_self_contained(html: str) -> None:
    """No external resource: no remote src/href, no stylesheet link, no script, no url()."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "<link" not in html
    assert "<script" not in html
    assert "url(" not in html
    assert "@import" not in html


@pytest.fixture
def failing_report(tmp_path: Path) -> tuple[Summary, Path]:
    """A DO NOT PROMOTE report with a failed item, a skipped one, metrics and plots."""
    metric = MetricRecord(
        "pytest", "GET /api/jobs", "p95", "FAIL", "significant", 4.8, 9.6, "ms", 100.0, "10%", 0.008
    )
    trigger = TriggerRecord("pytest", "response_time_degradation", "FIRED", "worst p95 +100%")
    summary = make_summary(
        {ERRORS_ITEM: [("failed", FAILURE)], JOBS_ITEM: [("skipped", "destructive")]},
        metrics=(metric,),
        triggers=(trigger,),
        performance={"available": True, "verdict": "FAIL", "plots": plot_series()},
    )
    path = tmp_path / "signoff.html"
    write_signoff(path, summary)
    return summary, path


def test_failing_report_renders_offline(
    tmp_path: Path, failing_report: tuple[Summary, Path]
) -> None:
    _, path = failing_report
    html = path.read_text()
    assert_self_contained(html)
    seen = probe(tmp_path, path)
    assert seen["verdict"] == "DO NOT PROMOTE"
    assert seen["verdictShown"]
    assert seen["banner"] == "rgb(207, 34, 46)"
    rows = {r["item"]: r for r in seen["rows"]}
    failed = rows[ERRORS_ITEM]
    assert failed["status"] == "failed"
    assert failed["shown"]
    assert "expected: HTTP 404" in failed["text"]
    assert "Reproduce with: curl" in failed["text"]
    assert seen["failedDetailsOpen"]
    assert rows[JOBS_ITEM]["status"] == "skipped"
    plots = [i for i in seen["imgs"] if i["src"].startswith("data:image/png;base64")]
    assert len(plots) == 4  # latency, throughput, memory, WebSocket push latency
    assert all(i["w"] > 300 and i["h"] > 100 and i["shown"] for i in plots)
    pixels = screenshot(tmp_path, path)
    red, green, blue = (float(c) for c in pixels[90, 200][:3])
    assert red > 0.7 > green  # the banner is red at the top of the page
    assert blue < 0.3


def test_real_failing_run_shows_its_item_and_evidence(tmp_path: Path, fault_run: Run) -> None:
    report = fault_run.reports / "signoff.html"
    assert_self_contained(report.read_text())
    seen = probe(tmp_path, report)
    assert seen["verdict"] == "DO NOT PROMOTE"
    row = next(r for r in seen["rows"] if r["item"] == ERRORS_ITEM)
    assert row["status"] == "failed"
    assert row["shown"]
    assert "HTTP 500" in row["text"]
    assert "Reproduce with: curl" in row["text"]


def test_real_passing_run_shows_promote(tmp_path: Path, promote_run: Run) -> None:
    report = promote_run.reports / "signoff.html"
    assert_self_contained(report.read_text())
    seen = probe(tmp_path, report)
    assert seen["verdict"] == "PROMOTE"
    assert seen["banner"] == "rgb(26, 127, 55)"
    assert any(r["item"] == ERRORS_ITEM and r["status"] == "passed" for r in seen["rows"])
