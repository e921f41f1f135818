"""The run report: ``results.json`` -> ``report.html`` (self-contained), ``report.md`` and figures/*.png."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from prunekit.errors import ConfigError, DataError
from prunekit.report import load_results, render, render_html, render_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"accuracy", "histograms", "sensitivity", "ratios", "layers"}
EVIL = "<script>alert(1)</script>"


def full_results() -> dict:
    """A run that went through every step: every optional part present (a fresh copy each call)."""
    return {
        "format": "prunekit.run-results", "version": 1,
        "title": "digits_cnn: 80 % global magnitude",
        "recipe": "recipe.yaml",
        "status": "complete",
        "started": "2026-12-06T05:40:00Z", "finished": "2026-12-06T05:41:10Z",
        "machine": {"python": "3.11.7", "torch": "2.13.0+cpu", "prunekit": "0.1.0", "threads": 1,
                    "platform": "Linux-x86_64", "cpu_count": 2},
        "steps": [{"name": "train", "seconds": 12.5, "status": "done"},
                  {"name": "prune", "seconds": 0.4, "status": "done"}],
        "summary": {
            "dense": {"top1": 0.972, "params": 25000, "nonzeros": 25000, "macs": 400000, "bytes": 100000,
                      "latency_ms": 0.21},
            "pruned": {"top1": 0.965, "params": 25000, "nonzeros": 5000, "macs": 81920, "bytes": 24000,
                       "latency_ms": 0.15},
        },
        "eval": {"images": 360, "split": "test", "latency_batch": 1, "latency_threads": 1,
                 "latency_repeats": 20},
        "layers": [
            {"name": "features.0", "type": "Conv2d", "shape": [16, 1, 3, 3], "sparsity": 0.8, "params": 160,
             "nonzeros": 32, "macs": 9216, "bytes": 640, "latency_share": 0.12, "kernel": "dense"},
            {"name": EVIL, "type": "Linear", "shape": [10, 64], "sparsity": 0.5, "params": 640,
             "nonzeros": 320, "macs": 640, "bytes": 2560, "latency_share": 0.3, "kernel": "numba_csr"},
        ],
        "pinned": [{"module": "classifier", "reason": "the output layer is never pruned"}],
        "training": {
            "dense": [{"epoch": 1, "train_loss": 1.2, "top1": 0.85, "lr": 0.05, "seconds": 1.1},
                      {"epoch": 2, "train_loss": 0.6, "top1": 0.93, "lr": 0.05, "seconds": 1.1}],
            "recovery": [
                {"epoch": 1, "train_loss": 0.4, "top1": 0.95, "lr": 0.01, "seconds": 1.0, "sparsity": 0.8},
                {"epoch": 2, "train_loss": 0.3, "top1": 0.96, "lr": 0.01, "seconds": 1.0, "sparsity": 0.8}],
        },
        "search": {"method": "sensitivity", "metric": "top1", "ratios_tested": [0.1, 0.5, 0.9],
                   "baseline": 0.97,
                   "curves": {"features.0": [0.97, 0.9, 0.5], EVIL: [0.97, 0.95, 0.8]},
                   "ratios": {"features.0": 0.6, EVIL: 0.8}, "seconds": 30.0},
        "histograms": {"before": {"edges": [-1.0, -0.5, 0.0, 0.5, 1.0], "counts": [10, 120, 130, 12]},
                       "after": {"edges": [-1.0, -0.5, 0.0, 0.5, 1.0], "counts": [10, 20, 25, 11]}},
        "deploy": {"batch_size": 1, "threads": 1, "dense_ms": 0.21, "deployed_ms": 0.15, "reverted": False,
                   "layers": [{"name": "features.0", "kernel": "numba_csr", "dense_ms": 0.05,
                               "chosen_ms": 0.02,
                               "candidates": {"numba_csr": 0.02, "dense": 0.05}}]},
        "pruning": {"method": "masks", "granularity": "Element()", "criterion": "Magnitude(p=1)",
                    "allocation": "Global(sparsity=0.8)", "sparsity": 0.8},
        "artifacts": {"checkpoint": "model.pt", "recipe": "recipe.yaml", "log": "log.txt"},
    }


# Written out by hand (not computed with the module's formatter): top-1 as percent with 2 decimals,
# counts with thousands separators, bytes human-readable, latency in ms with 3 decimals.
EXPECTED_SUMMARY = {
    "dense.top1": "97.20%", "pruned.top1": "96.50%",
    "dense.params": "25,000", "pruned.params": "25,000",
    "dense.nonzeros": "25,000", "pruned.nonzeros": "5,000",
    "dense.macs": "400,000", "pruned.macs": "81,920",
    "dense.bytes": "97.7 KiB", "pruned.bytes": "23.4 KiB",
    "dense.latency_ms": "0.210 ms", "pruned.latency_ms": "0.150 ms",
}


class Page(HTMLParser):
    """Just enough of an HTML reader: tables (by class) as rows of (text, attrs), images, links, headings."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[tuple[str, dict]]]] = {}
        self.imgs: list[dict] = []
        self.links: list[dict] = []
        self.marks: list[tuple[str, str]] = []  # ("h1" | "h2" | "banner" | "note", text) in page order
        self._table: str | None = None
        self._row: list | None = None
        self._cell: list | None = None
        self._mark: list | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = a.get("class", "")
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [a, ""]
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a)
        kind = {"h1": "h1", "h2": "h2"}.get(tag)
        if tag in ("div", "p") and a.get("class") in ("banner", "note"):
            kind = a["class"]
        if kind:
            self._mark = [kind, tag, ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append((self._cell[1], self._cell[0]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif self._mark is not None and tag == self._mark[1]:
            self.marks.append((self._mark[0], self._mark[2]))
            self._mark = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._mark is not None:
            self._mark[2] += data

    def body(self, table: str) -> list[list[str]]:
        """The texts of a table's rows, header row left out."""
        return [[text for text, _ in row] for row in self.tables[table][1:]]

    def figures(self) -> list[dict]:
        return [a for a in self.imgs if "figure" in a.get("class", "").split()]


def make_run(folder: Path, results: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


def assert_png_not_blank(data: bytes, what: str) -> None:
    import matplotlib.image

    assert data[:8] == PNG_SIGNATURE, f"{what} is not a PNG"
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert pixels.shape[0] >= 100 and pixels.shape[1] >= 100, (what, pixels.shape)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.02, f"{what} is blank (one colour)"
    not_white = (rgb < 0.9).any(axis=-1).mean()
    assert not_white > 0.01, f"{what} has almost nothing drawn ({not_white:.2%} non-white pixels)"


def figure_bytes(img: dict) -> bytes:
    src = img["src"]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return base64.b64decode(src[len(prefix):], validate=True)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str, str]:
    """One full run folder rendered once (figures take a moment to draw): (run folder, html, markdown)."""
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path_factory.mktemp("report") / "run", full_results())
    html_path, md_path = render(run)
    return run, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the full report


def test_render_writes_both_files_into_the_run_folder(rendered) -> None:
    run, html_text, md_text = rendered
    assert sorted(p.name for p in run.iterdir()) == ["figures", "report.html", "report.md", "results.json"]
    assert html_text.startswith("<!DOCTYPE html>") and html_text.rstrip().endswith("</html>")
    assert md_text.startswith("# digits\\_cnn: 80 % global magnitude\n")
    # self-contained: no external URL, no script, no stylesheet link, every image inline
    assert not re.search(r"(?i)https?://|<script|<link|<iframe", html_text)
    page = Page(html_text)
    assert page.imgs and all(a["src"].startswith("data:image/png;base64,") for a in page.imgs)
    assert "<style>" in html_text


def test_render_returns_the_paths(tmp_path) -> None:
    run = make_run(tmp_path / "run", {"title": "t", "status": "complete"})
    assert render(run) == (run / "report.html", run / "report.md")
    assert render(str(run)) == (run / "report.html", run / "report.md")  # a str works as well


def test_summary_cells_hold_the_json_numbers_and_their_formatting(rendered) -> None:
    _, html_text, _ = rendered
    results = full_results()
    cells = {a["data-key"]: (text, a) for row in Page(html_text).tables["summary"] for text, a in row
             if "data-key" in a}
    assert set(cells) == set(EXPECTED_SUMMARY)
    assert html_text.count("data-key=") == len(EXPECTED_SUMMARY)  # no summary cell outside the table
    for key, (text, attrs) in cells.items():
        side, name = key.split(".")
        assert json.loads(attrs["data-value"]) == results["summary"][side][name], key
        assert text == EXPECTED_SUMMARY[key], key
    assert cells["dense.bytes"][1]["title"] == "100,000 bytes"  # the exact number behind "97.7 KiB"
    rows = {row[0]: row[1:] for row in Page(html_text).body("summary")}
    assert rows["Top-1 accuracy"][2] == "-0.70 pp"
    assert rows["Nonzeros"][2] == "×0.200 (-80.0%)"
    assert rows["Measured latency"][2] == "×0.714 (1.40× faster)"
    assert list(rows) == ["Top-1 accuracy", "Parameters", "Nonzeros", "MACs", "Bytes", "Measured latency"]


def test_every_figure_appears_once_as_a_drawn_png(rendered) -> None:
    _, html_text, _ = rendered
    figs = Page(html_text).figures()
    assert Counter(a["data-figure"] for a in figs) == Counter(ALL_FIGURES)
    for img in figs:
        assert img["alt"], img["data-figure"]
        assert_png_not_blank(figure_bytes(img), img["data-figure"])


def test_sections_come_in_order(rendered) -> None:
    _, html_text, _ = rendered
    marks = Page(html_text).marks
    assert marks[0] == ("h1", "digits_cnn: 80 % global magnitude")
    headings = [text for kind, text in marks if kind == "h2"]
    assert headings == ["Summary", "Layers", "Figures", "Search", "Deployment", "Steps", "Artifacts"]
    assert "banner" not in [kind for kind, _ in marks]  # a complete run has no banner
    assert "took 1 min 10 s" in html_text
    assert "Python 3.11.7 · torch 2.13.0+cpu · prunekit 0.1.0" in html_text


def test_layer_deploy_step_tables_and_links(rendered) -> None:
    _, html_text, _ = rendered
    page = Page(html_text)
    assert page.body("layers")[0] == ["features.0", "Conv2d", "16×1×3×3", "80.00%", "160", "32", "9,216",
                                      "640 B", "12.0%", "dense"]
    assert page.body("layers")[1][0] == EVIL
    assert "classifier: the output layer is never pruned" in html_text
    assert page.body("deploy") == [["features.0", "numba_csr", "0.050 ms", "0.020 ms", "2.50×",
                                    "numba_csr 0.020 ms, dense 0.050 ms"]]
    assert "Not reverted" in html_text
    assert page.body("steps") == [["train", "done", "12.50 s"], ["prune", "done", "0.40 s"],
                                  ["total", "", "12.90 s"]]
    assert [a["href"] for a in page.links] == ["model.pt", "recipe.yaml", "log.txt"]


def test_text_from_the_json_is_escaped(rendered) -> None:
    _, html_text, md_text = rendered
    assert "<script" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<script" not in md_text and "&lt;script&gt;alert(1)&lt;/script&gt;" in md_text


def test_hostile_strings_everywhere_stay_text(tmp_path) -> None:
    results = full_results()
    results["title"] = 'A & B <img src=x onerror="alert(1)">'
    results["status"] = "<b>killed</b>"
    results["machine"]["platform"] = '"><script>x</script>'
    results["artifacts"] = {"checkpoint": "javascript:alert(1)", "log": "/etc/passwd", "odd": 'a"b <c>.txt'}
    results.pop("training"), results.pop("search"), results.pop("histograms"), results.pop("layers")
    text = render_html(results)
    assert not re.search(r"<(script|img src=x|b>)", text)
    assert "<title>A &amp; B &lt;img src=x onerror=&quot;alert(1)&quot;&gt;</title>" in text
    assert "Run stopped: &lt;b&gt;killed&lt;/b&gt;" in text
    hrefs = [a["href"] for a in Page(text).links]
    assert hrefs == ["javascript%3Aalert%281%29", "a%22b%20%3Cc%3E.txt"]  # relative: no scheme, not absolute
    assert "<code>/etc/passwd</code>" in text


# ---------------------------------------------------------------- the markdown twin


def test_markdown_twin_has_the_same_numbers_tables_and_figure_files(rendered) -> None:
    run, html_text, md_text = rendered
    rows: dict[str, list[str]] = {}
    for line in md_text.splitlines():
        if line.startswith("| "):  # first cell -> the other cells, of the first row that starts so
            rows.setdefault(line.split("|")[1].strip(), [c.strip() for c in line.split("|")[2:-1]])
    for label, key in [("Top-1 accuracy", "top1"), ("Parameters", "params"), ("Nonzeros", "nonzeros"),
                       ("MACs", "macs"), ("Bytes", "bytes"), ("Measured latency", "latency_ms")]:
        assert rows[label][:2] == [EXPECTED_SUMMARY[f"dense.{key}"], EXPECTED_SUMMARY[f"pruned.{key}"]], label
    assert rows["Top-1 accuracy"][2] == "-0.70 pp"
    assert rows["features.0"][:4] == ["Conv2d", "16×1×3×3", "80.00%", "160"]  # the layer table
    assert "| Layer | Kernel | Dense | Chosen | Speedup | Candidates |" in md_text  # the deploy table
    assert "| 0.050 ms | 0.020 ms | 2.50× |" in md_text
    links = re.findall(r"!\[([^\]]+)\]\((figures/(\w+)\.png)\)", md_text)
    assert sorted(name for _, _, name in links) == sorted(ALL_FIGURES)
    inline = {a["data-figure"]: figure_bytes(a) for a in Page(html_text).figures()}
    for alt, rel, name in links:
        assert alt
        assert (run / rel).read_bytes() == inline[name], name  # the same picture in both reports
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(f"{n}.png" for n in ALL_FIGURES)
    assert "- checkpoint: [model.pt](model.pt)" in md_text


def test_render_markdown_and_render_html_work_without_a_folder() -> None:
    pytest.importorskip("matplotlib")
    results = full_results()
    md_text, html_text = render_markdown(results), render_html(results)
    assert "| Nonzeros | 25,000 | 5,000 |" in md_text
    assert 'data-key="pruned.nonzeros" data-value="5000">5,000<' in html_text


def test_the_same_results_give_the_same_bytes(tmp_path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    backend = matplotlib.get_backend()
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    a, b = make_run(tmp_path / "a", full_results()), make_run(tmp_path / "b", full_results())
    render(a)
    render(b)
    for rel in ["report.html", "report.md", *(f"figures/{n}.png" for n in ALL_FIGURES)]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert matplotlib.get_backend() == backend  # no global plotting state touched
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded


# ---------------------------------------------------------------- partial runs


def test_a_bare_results_file_renders_without_figures(tmp_path) -> None:
    run = make_run(tmp_path / "run", {"format": "prunekit.run-results", "version": 1, "status": "complete"})
    html_path, md_path = render(run)
    html_text = html_path.read_text(encoding="utf-8")
    page = Page(html_text)
    assert page.figures() == [] and "data-key" not in html_text
    assert ("note", "No summary: the evaluation did not run.") in page.marks
    assert ("note", "No data for figures in this run.") in page.marks
    assert not (run / "figures").exists()
    assert md_path.read_text(encoding="utf-8").startswith("# prunekit run report\n")


# which figures go when a part is missing (or null)
FIGURE_SOURCES = {"training": {"accuracy"}, "histograms": {"histograms"}, "search": {"sensitivity", "ratios"},
                  "layers": {"layers"}}


@pytest.mark.parametrize("part", sorted(FIGURE_SOURCES))
@pytest.mark.parametrize("how", ["missing", "null"])
def test_a_missing_part_drops_only_its_figures(part: str, how: str) -> None:
    pytest.importorskip("matplotlib")
    results = full_results()
    if how == "missing":
        del results[part]
    else:
        results[part] = None
    figs = {a["data-figure"] for a in Page(render_html(results)).figures()}
    assert figs == ALL_FIGURES - FIGURE_SOURCES[part]
    md_text = render_markdown(results)
    assert set(re.findall(r"\(figures/(\w+)\.png\)", md_text)) == figs


def test_every_other_part_may_be_missing_or_null() -> None:
    pytest.importorskip("matplotlib")
    results = full_results()
    for key in ("machine", "steps", "eval", "pinned", "deploy", "pruning", "artifacts", "recipe", "started",
                "finished", "title"):
        results[key] = None
    results["summary"] = {"dense": results["summary"]["dense"]}  # stopped before measuring the pruned model
    results["search"] = {"ratios": {"features.0": 0.5}}  # ratios without curves: only the bar chart
    results["training"] = {"dense": [{"epoch": 1, "top1": None}, {"epoch": 2, "top1": 0.9}]}
    text = render_html(results)
    page = Page(text)
    assert {a["data-figure"] for a in page.figures()} == {"accuracy", "histograms", "ratios", "layers"}
    assert [h for kind, h in page.marks if kind == "h2"] == ["Summary", "Layers", "Figures", "Search"]
    cells = {a["data-key"]: t for row in page.tables["summary"] for t, a in row if "data-key" in a}
    assert cells == {k: v for k, v in EXPECTED_SUMMARY.items() if k.startswith("dense.")}
    assert page.body("summary")[0] == ["Top-1 accuracy", "97.20%", "—", "—"]
    assert "Run stopped" not in text  # status is still "complete"


def test_odd_values_do_not_crash_the_report() -> None:
    pytest.importorskip("matplotlib")
    results = full_results()
    results["layers"] = "not a list"
    results["summary"]["pruned"]["top1"] = "n/a"
    results["summary"]["dense"]["latency_ms"] = True  # a bool is not a number
    results["histograms"]["after"]["counts"] = [1, 2]  # does not match its edges: left out
    results["search"]["curves"]["features.0"] = [0.9, None, "x"]
    page = Page(render_html(results))
    cells = {a["data-key"] for row in page.tables["summary"] for _, a in row if "data-key" in a}
    assert "pruned.top1" not in cells and "dense.latency_ms" not in cells
    assert {a["data-figure"] for a in page.figures()} == ALL_FIGURES - {"layers"}


@pytest.mark.parametrize("status", ["interrupted at step recover", None])
def test_a_stopped_run_shows_the_banner_first(tmp_path, status) -> None:
    results = full_results()
    results["status"] = status
    del results["deploy"], results["summary"]["pruned"]
    html_path, md_path = render(make_run(tmp_path / "run", results))
    marks = Page(html_path.read_text(encoding="utf-8")).marks
    expected = f"Run stopped: {status or 'unknown (no status recorded)'}"
    assert marks[1] == ("banner", expected)  # right under the title, above the summary
    assert marks[2] == ("h2", "Summary")
    assert f"> **{expected}**" in md_path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- comparing runs


def test_compare_with_adds_a_table_of_both_runs(tmp_path) -> None:
    first = make_run(tmp_path / "a", full_results())
    other = full_results()
    other["title"] = "digits_cnn: 90 % global magnitude"
    other["summary"]["pruned"].update(top1=0.941, nonzeros=2500, latency_ms=0.125)
    second = make_run(tmp_path / "b", other)
    html_path, md_path = render(first, compare_with=[second])
    page = Page(html_path.read_text(encoding="utf-8"))
    rows = {row[0]: row[1:] for row in page.body("comparison")}
    assert rows["Title"] == ["digits_cnn: 80 % global magnitude", "digits_cnn: 90 % global magnitude"]
    assert rows["Top-1 accuracy (pruned)"] == ["96.50%", "94.10%"]
    assert rows["Nonzeros (pruned)"] == ["5,000", "2,500"]
    assert rows["Measured latency (pruned)"] == ["0.150 ms", "0.125 ms"]
    assert list(rows) == ["Title", "Status", "Top-1 accuracy (pruned)", "Parameters (pruned)",
                          "Nonzeros (pruned)", "MACs (pruned)", "Bytes (pruned)", "Measured latency (pruned)"]
    values = {a["data-compare"]: json.loads(a["data-value"])
              for row in page.tables["comparison"] for _, a in row if "data-compare" in a}
    assert values["0.top1"] == 0.965 and values["1.top1"] == 0.941
    md_text = md_path.read_text(encoding="utf-8")
    assert "## Comparison" in md_text
    assert "| Title | digits\\_cnn: 80 % global magnitude | digits\\_cnn: 90 % global magnitude |" in md_text
    assert "| Top-1 accuracy (pruned) | 96.50% | 94.10% |" in md_text

    render(first)  # without compare_with: no comparison
    assert "comparison" not in Page((first / "report.html").read_text(encoding="utf-8")).tables


def test_compare_with_a_folder_without_results_raises(tmp_path) -> None:
    run = make_run(tmp_path / "run", {"status": "complete"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "empty"))):
        render(run, compare_with=[tmp_path / "empty"])
    assert not (run / "report.html").exists()


# ---------------------------------------------------------------- errors and writing


def test_a_folder_without_results_json_raises_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        render(tmp_path)
    assert str(tmp_path) in str(err.value) and "results.json" in str(err.value)
    assert "run `prunekit run` first" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(ConfigError, match="does not exist"):
        load_results(tmp_path / "nope")


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format": "something-else"}', "format is 'something-else'"),
    ('{"format": "prunekit.run-results", "version": 99}', "upgrade prunekit"),
])
def test_invalid_results_json_raises_config_error(tmp_path, content, message) -> None:
    (tmp_path / "results.json").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        render(tmp_path)
    assert str(tmp_path / "results.json") in str(err.value)
    assert not (tmp_path / "report.html").exists()


def test_a_failed_write_leaves_no_report_behind(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run", full_results())
    (run / "report.html").mkdir()  # the HTML cannot be written: nothing else may appear
    with pytest.raises(DataError, match="report.html"):
        render(run)
    assert sorted(p.name for p in run.iterdir()) == ["report.html", "results.json"]  # no figures/, no temp
    assert list((run / "report.html").iterdir()) == []


def test_without_matplotlib_the_report_says_how_to_get_figures(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run", full_results())
    render(run)
    assert (run / "figures" / "layers.png").is_file()
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import matplotlib... now raises ImportError
    html_path, md_path = render(run)
    html_text, md_text = html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")
    assert Page(html_text).figures() == []
    assert "Figures need matplotlib: <code>pip install prunekit[plots]</code>" in html_text
    assert "Figures need matplotlib: `pip install prunekit[plots]`" in md_text
    assert "figures/" not in md_text
    assert list((run / "figures").iterdir()) == []  # the earlier figures, no longer linked, are gone
    assert 'data-key="pruned.macs" data-value="81920">81,920<' in html_text  # the rest is all there


def test_the_source_results_are_not_modified(tmp_path) -> None:
    results = full_results()
    before = copy.deepcopy(results)
    render_html(results, [full_results()])
    assert results == before


def test_a_searchs_iterations_are_in_both_reports() -> None:
    from prunekit.report import render_html, render_markdown

    r = {"title": "t", "status": "complete",
         "search": {"method": "netadapt", "seconds": 12.0, "target": 0.7, "reached": False,
                    "iterations": [{"iteration": 1, "group": "a:out", "removed": 3, "latency_ratio": 0.9,
                                    "accuracy": 0.8}]}}
    html, md = render_html(r), render_markdown(r)
    for text in (html, md):
        assert "target NOT reached" in text and "0.900" in text and "80.00%" in text and "a:out" in text
