"""The HTML report in a real browser (headless Chromium): every figure is decoded and painted, and the
summary numbers on screen are the JSON's.

A copy of the report gets a small script that, once the page has loaded, draws each ``img.figure`` on
a canvas and counts its non-white pixels, and reads the text shown in each ``[data-key]`` cell; it
writes what it found as JSON into ``<pre id="pk-check">``, which ``chromium --dump-dom`` prints.
(The figures are ``data:`` URIs, so the canvas is not tainted and its pixels can be read.)
A second test tampers with a report (one blank figure, one broken figure, one wrong number) and
checks that the same check catches all three.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from prunekit.report import render
from test_report import ALL_FIGURES, full_results, make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

CHECK = """<script>
window.addEventListener("load", function () {
  var out = {figures: [], cells: [], errors: []};
  try {
    document.querySelectorAll("img.figure").forEach(function (img) {
      var box = img.getBoundingClientRect();
      var rec = {name: img.getAttribute("data-figure"), complete: img.complete, width: img.naturalWidth,
                 height: img.naturalHeight, shown: [box.width, box.height], painted: 0, pixels: 0};
      if (img.complete && img.naturalWidth > 0) {
        var canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        var ctx = canvas.getContext("2d");
        ctx.fillStyle = "#ffffff";
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        ctx.drawImage(img, 0, 0);
        var d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        for (var i = 0; i < d.length; i += 4) {
          if (d[i] < 230 || d[i + 1] < 230 || d[i + 2] < 230) rec.painted++;
        }
        rec.pixels = d.length / 4;
      }
      out.figures.push(rec);
    });
    document.querySelectorAll("[data-key]").forEach(function (el) {
      var box = el.getBoundingClientRect();
      out.cells.push({key: el.getAttribute("data-key"), value: el.getAttribute("data-value"),
                      text: el.innerText.trim(), shown: box.width > 0 && box.height > 0});
    });
  } catch (e) {
    out.errors.push(String(e));
  }
  var pre = document.createElement("pre");
  pre.id = "pk-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("chromium not installed: apt-get install chromium (or put chromium / google-chrome on PATH)")


def _browser_check(report: Path, tmp_path: Path) -> dict:
    """Load ``report`` (with the check script added) in headless Chromium; return what the script found."""
    browser = _browser()
    page = tmp_path / "checked.html"
    text = report.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    page.write_text(text.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", "--window-size=1280,2000", "--dump-dom", page.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{browser} did not finish within 60 s: {' '.join(cmd)}\n{exc.stderr or ''}")
    found = re.search(r'<pre id="pk-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"no check output from {browser} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))


def _expected_text(key: str, value: float) -> str:
    """How the report shows a summary value (top-1 in %, counts with separators, bytes in KiB, ms)."""
    name = key.split(".", 1)[1]
    if name == "top1":
        return f"{value * 100:.2f}%"
    if name == "bytes":
        return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value} B"
    if name == "latency_ms":
        return f"{value:.3f} ms"
    return f"{value:,}"


def _problems(check: dict, results: dict) -> list[str]:
    """Everything wrong on the page: figures missing, undecoded or blank; numbers not the JSON's."""
    problems = [f"script error: {e}" for e in check["errors"]]
    names = [f["name"] for f in check["figures"]]
    problems += [f"figure {n} appears {names.count(n)} times" for n in sorted(ALL_FIGURES)
                 if names.count(n) != 1]
    for f in check["figures"]:
        if not (f["complete"] and f["width"] > 0 and f["height"] > 0):
            problems.append(f"figure {f['name']} was not decoded")
        elif f["painted"] < 0.01 * f["pixels"]:
            problems.append(f"figure {f['name']} is blank ({f['painted']} of {f['pixels']} pixels drawn)")
        if f["shown"][0] < 100 or f["shown"][1] < 50:
            problems.append(f"figure {f['name']} is not shown at a readable size ({f['shown']})")
    cells = {c["key"]: c for c in check["cells"]}
    summary = results["summary"]
    expected_keys = {f"{side}.{name}" for side in ("dense", "pruned") for name in summary[side]}
    if set(cells) != expected_keys:
        problems.append(f"summary cells {sorted(set(cells) ^ expected_keys)} missing or unexpected")
    for key in sorted(expected_keys & set(cells)):
        side, name = key.split(".")
        value, cell = summary[side][name], cells[key]
        if cell["value"] is None or json.loads(cell["value"]) != value:
            problems.append(f"{key}: data-value {cell['value']} is not the JSON's {value}")
        if cell["text"] != _expected_text(key, value):
            want = _expected_text(key, value)
            problems.append(f"{key}: shows {cell['text']!r}, expected {want!r} for {value}")
        if not cell["shown"]:
            problems.append(f"{key}: not shown")
    return problems


def test_the_report_in_a_browser_shows_every_figure_and_the_json_numbers(tmp_path) -> None:
    _browser()
    pytest.importorskip("matplotlib")
    results = full_results()
    html_path, _ = render(make_run(tmp_path / "run", results))
    check = _browser_check(html_path, tmp_path)
    assert sorted(f["name"] for f in check["figures"]) == sorted(ALL_FIGURES)
    assert len(check["cells"]) == 12
    assert _problems(check, results) == []


def _white_png(width: int, height: int) -> bytes:
    """A valid, all-white RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff" * (3 * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_the_browser_check_catches_a_blank_figure_a_broken_one_and_a_wrong_number(tmp_path) -> None:
    """The check above can fail: the same check on a tampered report reports each fault."""
    import base64

    _browser()
    pytest.importorskip("matplotlib")
    results = full_results()
    html_path, _ = render(make_run(tmp_path / "run", results))
    text = html_path.read_text(encoding="utf-8")
    blank = "data:image/png;base64," + base64.b64encode(_white_png(600, 350)).decode("ascii")
    text, n1 = re.subn(r'(data-figure="histograms"[^>]*src=")[^"]+', lambda m: m.group(1) + blank, text)
    broken = "data:image/png;base64,AAAA"
    text, n2 = re.subn(r'(data-figure="ratios"[^>]*src=")[^"]+', lambda m: m.group(1) + broken, text)
    text, n3 = re.subn(r'(data-key="pruned.nonzeros" data-value="5000">)5,000<', r"\g<1>5,001<", text)
    assert (n1, n2, n3) == (1, 1, 1)
    tampered = tmp_path / "tampered.html"
    tampered.write_text(text, encoding="utf-8")
    problems = _problems(_browser_check(tampered, tmp_path), results)
    assert any(p.startswith("figure histograms is blank") for p in problems), problems
    assert "figure ratios was not decoded" in problems
    assert any(p.startswith("pruned.nonzeros: shows '5,001'") for p in problems), problems
    # and nothing else: every problem is about one of the three tampered items (a broken image is also small)
    assert all(re.match(r"figure (histograms|ratios) |pruned\.nonzeros: ", p) for p in problems), problems
