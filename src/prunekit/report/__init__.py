"""The report of a ``prunekit run``: a run folder's ``results.json`` as ``report.html`` and ``report.md``.

:func:`render` reads ``run_dir/results.json`` and writes, all together or not at all (see
:mod:`prunekit.io`):

* ``report.html``: one self-contained page (inline CSS, figures as ``data:`` PNGs, no scripts, no
  external URL) with the summary (dense vs pruned: top-1, parameters, nonzeros, MACs, bytes,
  measured latency), the per-layer table, the figures, the deployment choices, the steps and
  links to the run's artifacts;
* ``report.md``: its Markdown twin, the same tables with the same formatted numbers, linking the
  figures written as ``figures/NAME.png`` next to it.

Every part of ``results.json`` but the file itself is optional: a run that stopped early gets a
"Run stopped: <status>" banner and the sections it has data for. ``compare_with`` adds a table
comparing the run with other run folders. Figures need matplotlib (``pip install prunekit[plots]``);
without it the report says so in their place.

Summary cells carry their raw value for checks: ``<td data-key="pruned.macs" data-value="400000">``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from prunekit.errors import ConfigError
from prunekit.io import atomic_write_many
from prunekit.report import figures as _figures
from prunekit.report.figures import INSTALL_HINT, DrawnFigure, _dict, _list

__all__ = ["FORMAT", "RESULTS", "VERSION", "load_results", "render", "render_html", "render_markdown"]

RESULTS = "results.json"
FORMAT = "prunekit.run-results"
VERSION = 1
HTML_NAME, MD_NAME, FIGURE_DIR = "report.html", "report.md", "figures"

# (key in summary.dense / summary.pruned, row label, formatter kind)
SUMMARY_ROWS = (
    ("top1", "Top-1 accuracy", "top1"),
    ("params", "Parameters", "count"),
    ("nonzeros", "Nonzeros", "count"),
    ("macs", "MACs", "count"),
    ("bytes", "Bytes", "bytes"),
    ("latency_ms", "Measured latency", "ms"),
)
_DASH = "—"


# ---------------------------------------------------------------- loading


def load_results(run_dir: str | os.PathLike[str]) -> dict:
    """Read ``run_dir/results.json``; raise :class:`ConfigError` naming the path and the fix if it is
    missing or not a prunekit run result.

    >>> import tempfile
    >>> load_results(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: not a prunekit run folder: ... has no results.json; run `prunekit run` first
    """
    run = Path(run_dir)
    path = run / RESULTS
    if not run.exists():
        raise ConfigError(f"not a prunekit run folder: {run} does not exist; give the folder that "
                          f"`prunekit run` wrote (it holds {RESULTS})")
    if not run.is_dir():
        raise ConfigError(f"not a prunekit run folder: {run} is a file; give the folder that holds {RESULTS}")
    if not path.is_file():
        raise ConfigError(f"not a prunekit run folder: {run} has no {RESULTS}; run `prunekit run` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not UTF-8 text ({exc.reason}); "
                          f"run `prunekit run` again to write it") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot read {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}); run `prunekit run` again to write it") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a prunekit run result: expected a JSON object, "
                          f"found {type(data).__name__}; run `prunekit run` to write one")
    fmt = data.get("format")
    if fmt is not None and fmt != FORMAT:
        raise ConfigError(f"{path} is not a prunekit run result: format is {fmt!r}, expected {FORMAT!r}")
    version = data.get("version")
    if _is_num(version) and version > VERSION:
        raise ConfigError(f"{path} is results format version {version}, newer than this prunekit reads "
                          f"(version {VERSION}); upgrade prunekit")
    return data


# ---------------------------------------------------------------- reading values defensively


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _text(x: Any) -> str:
    """A JSON value as plain text (strings as they are, containers as JSON)."""
    if x is None:
        return _DASH
    if isinstance(x, str):
        return x
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False)
    return str(x)


# ---------------------------------------------------------------- number formatting (HTML and Markdown alike)


def _fmt_count(x: float) -> str:
    if isinstance(x, int) or (math.isfinite(x) and float(x).is_integer()):
        return f"{int(x):,}"
    return f"{x:,.1f}" if math.isfinite(x) else str(x)


def _fmt_bytes(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    value, unit = float(x), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{_fmt_count(x)} B" if unit == "B" else f"{value:.1f} {unit}"


def _fmt_pct(x: float, digits: int = 2) -> str:
    return f"{x * 100:.{digits}f}%" if math.isfinite(x) else str(x)


def _fmt_ms(x: float) -> str:
    return f"{x:.3f} ms" if math.isfinite(x) else str(x)


def _fmt_seconds(x: float) -> str:
    return f"{x:.2f} s" if math.isfinite(x) else str(x)


_FORMATS = {"top1": _fmt_pct, "count": _fmt_count, "bytes": _fmt_bytes, "ms": _fmt_ms,
            "pct1": lambda x: _fmt_pct(x, 1), "pct0": lambda x: _fmt_pct(x, 0), "ratio": lambda x: f"{x:.3f}",
            "seconds": _fmt_seconds}


@dataclass(frozen=True)
class _Cell:
    text: str
    attrs: tuple[tuple[str, str], ...] = ()  # extra HTML attributes (data-key, data-value, title)
    num: bool = False  # right-aligned


def _cell(value: Any, kind: str, key: tuple[str, str] | None = None) -> _Cell:
    """A formatted cell; numbers keep their raw JSON value in ``data-value`` (under ``key``'s attribute)."""
    if not _is_num(value):
        return _Cell(_text(value))
    attrs: list[tuple[str, str]] = []
    if key is not None:
        attrs += [key, ("data-value", json.dumps(value))]
    if kind == "bytes":
        attrs.append(("title", f"{_fmt_count(value)} bytes"))
    return _Cell(_FORMATS[kind](value), tuple(attrs), num=True)


def _change(key: str, dense: Any, pruned: Any) -> str:
    """How the pruned value compares with the dense one."""
    if not (_is_num(dense) and _is_num(pruned) and math.isfinite(dense) and math.isfinite(pruned)):
        return _DASH
    if key == "top1":
        return f"{(pruned - dense) * 100:+.2f} pp"
    if dense == 0:
        return _DASH
    ratio = pruned / dense
    if key == "latency_ms":
        if pruned <= 0:
            return f"×{ratio:.3f}"
        speed = dense / pruned
        if speed >= 1:
            return f"×{ratio:.3f} ({speed:.2f}× faster)"
        return f"×{ratio:.3f} ({1 / speed:.2f}× slower)"
    return f"×{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"


def _speedup(dense: Any, chosen: Any) -> str:
    if _is_num(dense) and _is_num(chosen) and chosen > 0 and math.isfinite(dense):
        return f"{dense / chosen:.2f}×"
    return _DASH


# ---------------------------------------------------------------- the document (one model, two renderings)


@dataclass(frozen=True)
class _Code:
    text: str


Inline = str | _Code


@dataclass(frozen=True)
class _Table:
    name: str  # HTML class
    headers: tuple[str, ...]
    rows: tuple[tuple[_Cell, ...], ...]
    numeric: tuple[bool, ...]  # per column: right-aligned


@dataclass(frozen=True)
class _Block:
    kind: str  # h1 h2 banner meta p note list table figures links
    parts: tuple[Any, ...] = ()
    ident: str = ""


def _p(kind: str, *parts: Inline) -> _Block:
    return _Block(kind, tuple(parts))


def _table(name: str, headers: Sequence[str], rows: Iterable[Sequence[_Cell]]) -> _Block:
    rows = tuple(tuple(r) for r in rows)
    numeric = tuple(bool(rows) and all(r[i].num or r[i].text == _DASH for r in rows) and
                    any(r[i].num for r in rows) for i in range(len(headers)))
    return _Block("table", (_Table(name, tuple(headers), rows, numeric),))


def _duration(started: Any, finished: Any) -> str | None:
    try:
        a = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
        seconds = (b - a).total_seconds()
    except (ValueError, TypeError):
        return None
    if seconds < 0:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _machine_line(machine: dict) -> str:
    labels = {"python": "Python {}", "torch": "torch {}", "prunekit": "prunekit {}", "platform": "{}",
              "threads": "{} torch thread(s)", "cpu_count": "{} CPU(s)"}
    parts = [labels[k].format(_text(machine[k])) for k in labels if machine.get(k) is not None]
    parts += [f"{k}: {_text(v)}" for k, v in machine.items() if k not in labels and v is not None]
    return " · ".join(parts)


def _header(results: dict) -> list[_Block]:
    title = _text(results.get("title") or "prunekit run report")
    blocks = [_p("h1", title)]
    status = results.get("status")
    if status != "complete":
        shown = _text(status) if status else "unknown (no status recorded)"
        blocks.append(_p("banner", f"Run stopped: {shown}"))
    when = []
    if results.get("recipe"):
        when.append(f"Recipe: {_text(results['recipe'])}")
    if results.get("started"):
        when.append(f"started {_text(results['started'])}")
    if results.get("finished"):
        when.append(f"finished {_text(results['finished'])}")
    if (took := _duration(results.get("started"), results.get("finished"))) is not None:
        when.append(f"took {took}")
    if when:
        blocks.append(_p("meta", " · ".join(when)))
    if machine := _dict(results.get("machine")):
        blocks.append(_p("meta", f"Machine: {_machine_line(machine)}"))
    pruning = _dict(results.get("pruning"))
    if pruning:
        parts = [f"{k}: {_text(v)}" for k, v in pruning.items() if k != "sparsity" and v is not None]
        if _is_num(pruning.get("sparsity")):
            parts.append(f"target sparsity: {_fmt_pct(pruning['sparsity'])}")
        blocks.append(_p("meta", f"Pruning: {', '.join(parts)}"))
    return blocks


def _summary(results: dict) -> list[_Block]:
    blocks = [_Block("h2", ("Summary",), "summary")]
    summary = _dict(results.get("summary"))
    dense, pruned = _dict(summary.get("dense")), _dict(summary.get("pruned"))
    rows = []
    for key, label, kind in SUMMARY_ROWS:
        d, p = dense.get(key), pruned.get(key)
        if d is None and p is None:
            continue
        rows.append((_Cell(label), _cell(d, kind, ("data-key", f"dense.{key}")),
                     _cell(p, kind, ("data-key", f"pruned.{key}")), _Cell(_change(key, d, p), num=True)))
    if rows:
        blocks.append(_table("summary", ("", "Dense", "Pruned", "Change"), rows))
    elif results.get("kernels") is not None:
        best = [r for r in _list(_dict(results["kernels"]).get("rows")) if isinstance(r, dict) and _is_num(r.get("ratio"))]
        if best:
            b = min(best, key=lambda r: r["ratio"])
            blocks.append(_p("p", f"A kernel benchmark: {len(best)} cells timed; fastest against dense: "
                                  f"{_text(b.get('kernel'))} at {_fmt_pct(b.get('sparsity'), 0)} sparsity, batch "
                                  f"{_text(b.get('batch_size'))}, {_text(b.get('threads'))} thread(s), sparse / dense "
                                  f"{b['ratio']:.3f}. Every cell is in the table below."))
        else:
            blocks.append(_p("note", "No summary: the benchmark did not finish a cell."))
    else:
        blocks.append(_p("note", "No summary: the evaluation did not run."))
    ev = _dict(results.get("eval"))
    text = []
    if _is_num(ev.get("images")):
        split = f" {_text(ev['split'])}" if ev.get("split") else ""
        text.append(f"Top-1 on {_fmt_count(ev['images'])}{split} images")
    lat = [f"{label} {_text(ev[k])}" for k, label in
           (("latency_batch", "batch"), ("latency_threads", "threads"), ("latency_repeats", "repeats"))
           if ev.get(k) is not None]
    if lat:
        text.append(f"latency measured with {', '.join(lat)}")
    if text:
        blocks.append(_p("p", "; ".join(text) + "."))
    return blocks


def _comparison(results: dict, others: Sequence[dict]) -> list[_Block]:
    runs = [results, *others]
    headers = ("", "This run", *(f"Run {i + 2}" for i in range(len(others))))
    rows = [(_Cell("Title"), *(_Cell(_text(r.get("title") or _DASH)) for r in runs)),
            (_Cell("Status"), *(_Cell(_text(r.get("status"))) for r in runs))]
    for key, label, kind in SUMMARY_ROWS:
        cells = [_cell(_dict(_dict(r.get("summary")).get("pruned")).get(key), kind,
                       ("data-compare", f"{i}.{key}")) for i, r in enumerate(runs)]
        rows.append((_Cell(f"{label} (pruned)"), *cells))
    return [_Block("h2", ("Comparison",), "comparison"), _table("comparison", headers, rows)]


def _shape(x: Any) -> str:
    if isinstance(x, list) and all(_is_num(d) for d in x):
        return "×".join(str(d) for d in x)
    return _text(x)


def _layers(results: dict) -> list[_Block]:
    layers = [r for r in _list(results.get("layers")) if isinstance(r, dict)]
    pinned = [p for p in _list(results.get("pinned")) if isinstance(p, dict)]
    if not layers and not pinned:
        return []
    blocks = [_Block("h2", ("Layers",), "layers")]
    if layers:
        headers = ("Layer", "Type", "Shape", "Sparsity", "Params", "Nonzeros", "MACs", "Bytes",
                   "Latency share", "Kernel")
        rows = [(_Cell(_text(r.get("name"))), _Cell(_text(r.get("type"))), _Cell(_shape(r.get("shape"))),
                 _cell(r.get("sparsity"), "top1"), _cell(r.get("params"), "count"),
                 _cell(r.get("nonzeros"), "count"), _cell(r.get("macs"), "count"),
                 _cell(r.get("bytes"), "bytes"),
                 _cell(r.get("latency_share"), "pct1"), _Cell(_text(r.get("kernel"))))
                for r in layers]
        blocks.append(_table("layers", headers, rows))
    if pinned:
        blocks.append(_p("p", "Pinned modules (left unpruned):"))
        items = tuple(f"{_text(p.get('module'))}: {_text(p.get('reason'))}" for p in pinned)
        blocks.append(_Block("list", items))
    return blocks


def _figure_blocks(results: dict, figs: list[DrawnFigure] | None) -> list[_Block]:
    planned = _figures.planned(results)
    search = _dict(results.get("search"))
    blocks = [_Block("h2", ("Figures",), "figures")]
    if search:
        parts = [f"{k}: {_text(search[k])}" for k in ("method", "metric") if search.get(k) is not None]
        if tested := _list(search.get("ratios_tested")):
            parts.append(f"{len(tested)} ratios tested")
        if _is_num(search.get("baseline")):
            parts.append(f"unpruned {search['baseline']:.4g}")
        if _is_num(search.get("seconds")):
            parts.append(f"took {_fmt_seconds(search['seconds'])}")
        blocks.append(_p("p", f"Ratio search: {', '.join(parts)}."))
    if figs is None:
        if planned:
            blocks.append(_p("note", "Figures need matplotlib: ", _Code(INSTALL_HINT)))
        else:
            blocks.append(_p("note", "No data for figures in this run."))
        return blocks
    if not figs:
        blocks.append(_p("note", "No data for figures in this run."))
        return blocks
    blocks.append(_Block("figures", tuple(figs)))
    return blocks


def _deploy(results: dict) -> list[_Block]:
    deploy = _dict(results.get("deploy"))
    if not deploy:
        return []
    blocks = [_Block("h2", ("Deployment",), "deploy")]
    setup = [f"{label} {_text(deploy[k])}" for k, label in (("batch_size", "batch"), ("threads", "threads"))
             if deploy.get(k) is not None]
    d, c = deploy.get("dense_ms"), deploy.get("deployed_ms")
    if _is_num(d) and _is_num(c):
        text = f"Whole model: dense {_fmt_ms(d)}, deployed {_fmt_ms(c)} ({_speedup(d, c)} speedup)"
        blocks.append(_p("p", text + (f", measured with {', '.join(setup)}." if setup else ".")))
    rows = []
    for r in (r for r in _list(deploy.get("layers")) if isinstance(r, dict)):
        cands = _dict(r.get("candidates"))
        cand_text = ", ".join(f"{k} {_fmt_ms(v) if _is_num(v) else _text(v)}" for k, v in cands.items())
        rows.append((_Cell(_text(r.get("name"))), _Cell(_text(r.get("kernel"))),
                     _cell(r.get("dense_ms"), "ms"), _cell(r.get("chosen_ms"), "ms"),
                     _Cell(_speedup(r.get("dense_ms"), r.get("chosen_ms")), num=True),
                     _Cell(cand_text or _DASH)))
    if rows:
        blocks.append(_table("deploy", ("Layer", "Kernel", "Dense", "Chosen", "Speedup", "Candidates"), rows))
    if deploy.get("reverted") is True:
        blocks.append(_p("note", "Reverted: the deployed model measured slower than the dense one, "
                                 "so the dense model was kept."))
    elif deploy.get("reverted") is False:
        blocks.append(_p("p", "Not reverted: the deployed kernels were kept."))
    return blocks


def _kernels(results: dict) -> list[_Block]:
    """A kernel recipe's grid: one row per cell, sparse / dense time (the median of the rounds' ratios)."""
    kern = _dict(results.get("kernels"))
    if not kern:
        return []
    blocks = [_Block("h2", ("Sparse kernels",), "kernels")]
    shape = _list(kern.get("shape"))
    setup = []
    if len(shape) == 2:
        setup.append(f"Linear {_text(shape[1])} -> {_text(shape[0])}, fp32")
    for key, label in (("rounds", "rounds"), ("repeats", "calls per round, interleaved with dense"),
                       ("load", "busy processes beside")):
        if kern.get(key) is not None:
            setup.append(f"{_text(kern[key])} {label}")
    if setup:
        blocks.append(_p("p", "; ".join(setup) + ". Ratio: sparse / dense time, the median of the rounds' ratios "
                                             "(below 1: the sparse kernel is faster)."))
    rows = []
    for r in (r for r in _list(kern.get("rows")) if isinstance(r, dict)):
        rows.append((_Cell(_text(r.get("kernel"))), _cell(r.get("threads"), "count"), _Cell(_text(r.get("regime"))),
                     _cell(r.get("input_zeros"), "pct0"), _cell(r.get("sparsity"), "pct0"),
                     _cell(r.get("batch_size"), "count"), _cell(r.get("dense_ms"), "ms"),
                     _cell(r.get("sparse_ms"), "ms"), _cell(r.get("ratio"), "ratio"),
                     _cell(r.get("sparse_bytes"), "bytes")))
    if rows:
        blocks.append(_table("kernels", ("Kernel", "Threads", "Caches", "Input zeros", "Sparsity", "Batch", "Dense",
                                         "Sparse", "Sparse / dense", "Sparse bytes"), rows))
    else:
        blocks.append(_p("note", "No kernel rows: the benchmark did not finish a cell."))
    return blocks


def _weight_sharing(results: dict) -> list[_Block]:
    """``recover.weight_sharing``: accuracy through the stages and each Linear layer's storage."""
    ws = _dict(results.get("weight_sharing"))
    if not ws:
        return []
    blocks = [_Block("h2", ("Weight sharing and EIE storage",), "weight-sharing")]
    acc = [f"{label} {_fmt_pct(ws[k])}" for k, label in (("top1_before", "before sharing"),
                                                           ("top1_shared", "shared"),
                                                           ("top1_tuned", "centroids fine-tuned"))
           if _is_num(ws.get(k))]
    head = (f"{_text(ws.get('bits'))}-bit codebook per Linear layer (code 0 kept for 0.0), "
            f"{_text(ws.get('epochs'))} centroid epoch(s), EIE relative indices of {_text(ws.get('index_bits'))} bits")
    blocks.append(_p("p", head + (f". Top-1: {', '.join(acc)}." if acc else ".")))
    rows, total = [], {"dense_bytes": 0, "csr_bytes": 0, "eie_bytes": 0, "huffman_bytes": 0}
    for r in (r for r in _list(ws.get("layers")) if isinstance(r, dict)):
        d, e = r.get("dense_bytes"), r.get("eie_bytes")
        for k in total:
            total[k] += r.get(k) if _is_num(r.get(k)) else 0
        rows.append((_Cell(_text(r.get("name"))), _Cell(_shape(r.get("shape"))), _cell(r.get("nonzeros"), "count"),
                     _cell(r.get("values"), "count"), _cell(d, "bytes"), _cell(r.get("csr_bytes"), "bytes"),
                     _cell(e, "bytes"), _Cell(_speedup(d, e), num=True), _cell(r.get("huffman_bytes"), "bytes")))
    if rows:
        rows.append((_Cell("total"), _Cell(""), _Cell(""), _Cell(""), _cell(total["dense_bytes"], "bytes"),
                     _cell(total["csr_bytes"], "bytes"), _cell(total["eie_bytes"], "bytes"),
                     _Cell(_speedup(total["dense_bytes"], total["eie_bytes"]), num=True),
                     _cell(total["huffman_bytes"], "bytes")))
        blocks.append(_table("weight-sharing", ("Layer", "Shape", "Nonzeros", "Distinct values", "Dense fp32",
                                                "CSR fp32", "EIE", "Smaller by", "+ Huffman (estimate)"), rows))
    return blocks


def _admm(results: dict) -> list[_Block]:
    """ADMM (recover.admm): the top-1 right after the hard prune, before fine-tuning."""
    admm = _dict(results.get("admm"))
    if not admm:
        return []
    parts = [f"{_text(admm.get('epochs'))} ADMM epochs"]
    if _is_num(admm.get("residual_before_prune")):
        parts.append(f"residual ||W - Z|| / ||W|| {admm['residual_before_prune']:.3f} before the hard prune")
    if _is_num(admm.get("top1_after_hard_prune")):
        parts.append(f"top-1 {100 * admm['top1_after_hard_prune']:.2f} % right after it, before fine-tuning")
    return [_Block("h2", ("ADMM",), "admm"), _p("p", ", ".join(parts) + ".")]


def _recalibration(results: dict) -> list[_Block]:
    """BatchNorm recalibration (recover.recalibrate_bn): the top-1 before and after it."""
    bn = _dict(results.get("recalibrate_bn"))
    if not bn:
        return []
    text = (f"{_text(bn.get('layers'))} BatchNorm layers re-estimated from {_text(bn.get('batches'))} training "
            f"batches ({_text(bn.get('images'))} images), no gradient step")
    if _is_num(bn.get("top1_before")) and _is_num(bn.get("top1")):
        text += f": top-1 from {100 * bn['top1_before']:.2f} % to {100 * bn['top1']:.2f} % before fine-tuning"
    return [_Block("h2", ("BatchNorm recalibration",), "recalibrate-bn"), _p("p", text + ".")]


def _channel_rounds(results: dict) -> list[_Block]:
    """Channel rounds (recover.schedule with method channels): each round's cut, size and top-1."""
    rows = [r for r in _list(results.get("channel_rounds")) if isinstance(r, dict)]
    if not rows:
        return []
    blocks = [_Block("h2", ("Channel rounds",), "channel-rounds"),
              _p("p", f"The cut was reached in {len(rows)} rounds; each removed the same share of what was left in "
                      "every channel group, then fine-tuned the smaller model for its epochs (fresh cosine).")]
    blocks.append(_table("channel-rounds", ("Round", "Channels cut", "Parameters", "MACs", "Top-1 after the cut",
                                            "Epochs", "Top-1 after the round"),
                         [(_Cell(_text(r.get("round"))), _cell(r.get("units_removed"), "count"),
                           _cell(r.get("params"), "count"), _cell(r.get("macs"), "count"),
                           _cell(r.get("top1_after_cut"), "top1"), _cell(r.get("epochs"), "count"),
                           _cell(r.get("top1"), "top1")) for r in rows]))
    return blocks


def _lottery(results: dict) -> list[_Block]:
    """Lottery tickets (recover.lottery): every round's weights left and top-1, and the random re-init control."""
    lot = _dict(results.get("lottery"))
    rows = [r for r in _list(lot.get("rounds")) if isinstance(r, dict)]
    if not rows:
        return []
    how = "reset to the initialisation" if lot.get("rewind_step") == 0 else f"rewound to step {_text(lot.get('rewind_step'))}"
    blocks = [_Block("h2", ("Lottery ticket",), "lottery"),
              _p("p", f"Each round trained {_text(lot.get('epochs_per_round'))} epochs, survivors {how}.")]
    blocks.append(_table("lottery", ("Round", "Weights left", "Top-1"),
                         [(_Cell(_text(r.get("round"))), _cell(r.get("remaining"), "top1"), _cell(r.get("top1"), "top1"))
                          for r in rows]))
    ctrl = _dict(lot.get("random_reinit"))
    if _is_num(ctrl.get("top1")):
        blocks.append(_p("p", f"The last round's masks trained from a fresh random initialisation: top-1 "
                              f"{100 * ctrl['top1']:.2f} %."))
    return blocks


def _search(results: dict) -> list[_Block]:
    """What the search did: its method, cost and target, and NetAdapt's iterations (latency, accuracy)."""
    search = _dict(results.get("search"))
    if not search:
        return []
    blocks = [_Block("h2", ("Search",), "search")]
    parts = [f"method {_text(search.get('method'))}"]
    if _is_num(search.get("seconds")):
        parts.append(f"took {_fmt_seconds(search['seconds'])}")
    if _is_num(search.get("target")):
        budget = search.get("budget") if search.get("budget") in ("macs", "latency") else None
        parts.append(f"target {_text(search['target'])}" + (f" of the {'MACs' if budget == 'macs' else 'latency'} kept"
                                                             if budget else ""))
    for key, what in (("macs_kept", "MACs"), ("latency_kept", "measured latency")):
        if _is_num(search.get(key)):
            parts.append(f"{search[key]:.3f} of the {what} kept")
    if search.get("reached") is not None:
        parts.append("target reached" if search["reached"] is True else "target NOT reached")
    if _is_num(search.get("recalibrate_bn")) and search["recalibrate_bn"] > 0:
        parts.append(f"probes scored after re-estimating the BatchNorm statistics downstream of each cut from "
                     f"{_text(search['recalibrate_bn'])} augmented training batches")
    blocks.append(_p("p", ", ".join(parts) + "."))
    rows = []
    for r in (r for r in _list(search.get("iterations")) if isinstance(r, dict)):
        rows.append((_Cell(_text(r.get("iteration")), num=True), _Cell(_text(r.get("group"))),
                     _Cell(_text(r.get("removed")), num=True),
                     _Cell(f"{r['latency_ratio']:.3f}" if _is_num(r.get("latency_ratio")) else _DASH, num=True),
                     _cell(r.get("accuracy"), "top1")))
    if rows:
        blocks.append(_table("search-iterations", ("Iteration", "Channel group", "Removed",
                                                   "Latency / dense (measured)", "Accuracy (search set)"), rows))
    return blocks


def _steps(results: dict) -> list[_Block]:
    steps = [s for s in _list(results.get("steps")) if isinstance(s, dict)]
    if not steps:
        return []
    rows = [(_Cell(_text(s.get("name"))), _Cell(_text(s.get("status"))), _cell(s.get("seconds"), "seconds"))
            for s in steps]
    total = sum(s["seconds"] for s in steps if _is_num(s.get("seconds")))
    rows.append((_Cell("total"), _Cell(""), _Cell(_fmt_seconds(total), num=True)))
    return [_Block("h2", ("Steps",), "steps"), _table("steps", ("Step", "Status", "Time"), rows)]


def _href(target: str) -> str | None:
    """A relative link to ``target`` inside the run folder, or None for absolute paths (no link)."""
    if not target or PurePosixPath(target).is_absolute() or PureWindowsPath(target).anchor:
        return None
    return quote(target.replace("\\", "/"), safe="/")  # quoting "scheme:" keeps it a relative path


def _artifacts(results: dict) -> list[_Block]:
    arts = {k: v for k, v in _dict(results.get("artifacts")).items() if isinstance(v, str) and v}
    if not arts:
        return []
    return [_Block("h2", ("Artifacts",), "artifacts"),
            _Block("links", tuple((k, v, _href(v)) for k, v in arts.items()))]


def _document(results: dict, others: Sequence[dict], figs: list[DrawnFigure] | None) -> list[_Block]:
    blocks = _header(results) + _summary(results)
    if others:
        blocks += _comparison(results, others)
    return blocks + _layers(results) + _figure_blocks(results, figs) + _search(results) + _kernels(results) + _weight_sharing(results) + _admm(results) + _recalibration(results) + _channel_rounds(results) + _lottery(results) + _deploy(results) \
        + _steps(results) \
        + _artifacts(results)


def _draw(results: dict) -> list[DrawnFigure] | None:
    """The drawn figures, or None without matplotlib."""
    if not _figures.available():
        return None
    return _figures.draw_all(results)


# ---------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:70rem;
padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
.banner{background:#b42318;color:#fff;font-weight:700;font-size:1.15rem;padding:.7rem 1rem;border-radius:6px;
margin:.8rem 0}
.meta{color:#57606a;margin:.2rem 0}.note{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;
border-radius:6px}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.summary td:first-child{font-weight:600}
.figures{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9rem}code{background:#f6f8fa;padding:0 .25rem;border-radius:4px}
""".strip()


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _inline_html(parts: Iterable[Inline]) -> str:
    return "".join(f"<code>{_esc(p.text)}</code>" if isinstance(p, _Code) else _esc(p) for p in parts)


def _table_html(t: _Table) -> str:
    def cell(tag: str, c: _Cell, numeric: bool) -> str:
        attrs = "".join(f' {k}="{_esc(v)}"' for k, v in c.attrs)
        cls = ' class="num"' if numeric and c.text else ""
        return f"<{tag}{cls}{attrs}>{_esc(c.text)}</{tag}>"

    num = ' class="num"'
    head = "".join(f"<th{num if n else ''}>{_esc(h)}</th>" for h, n in zip(t.headers, t.numeric))
    body = "\n".join("<tr>" + "".join(cell("td", c, n) for c, n in zip(row, t.numeric)) + "</tr>"
                     for row in t.rows)
    return f'<table class="{t.name}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _figure_html(f: DrawnFigure) -> str:
    if f.png is None:
        return f'<p class="note">Figure “{_esc(f.title)}” could not be drawn: {_esc(f.error or "")}</p>'
    data = base64.b64encode(f.png).decode("ascii")
    width, height = int(_figures.WIDTH * _figures.DPI), int(_figures.HEIGHT * _figures.DPI)
    return (f'<figure><img class="figure" data-figure="{_esc(f.name)}" alt="{_esc(f.alt)}" width="{width}" '
            f'height="{height}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(f.title)}</figcaption></figure>")


def _to_html(blocks: list[_Block]) -> str:
    title = next((b.parts[0] for b in blocks if b.kind == "h1"), "prunekit run report")
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"<h1>{_inline_html(b.parts)}</h1>")
        elif b.kind == "h2":
            out.append(f'<h2 id="{_esc(b.ident)}">{_inline_html(b.parts)}</h2>')
        elif b.kind == "banner":
            out.append(f'<div class="banner" role="alert">{_inline_html(b.parts)}</div>')
        elif b.kind in ("meta", "note"):
            out.append(f'<p class="{b.kind}">{_inline_html(b.parts)}</p>')
        elif b.kind == "p":
            out.append(f"<p>{_inline_html(b.parts)}</p>")
        elif b.kind == "list":
            out.append("<ul>\n" + "\n".join(f"<li>{_esc(item)}</li>" for item in b.parts) + "\n</ul>")
        elif b.kind == "table":
            out.append(_table_html(b.parts[0]))
        elif b.kind == "figures":
            out.append('<div class="figures">\n' + "\n".join(_figure_html(f) for f in b.parts) + "\n</div>")
        elif b.kind == "links":
            items = [f'<li>{_esc(k)}: <a href="{_esc(href)}">{_esc(v)}</a></li>' if href else
                     f"<li>{_esc(k)}: <code>{_esc(v)}</code></li>" for k, v, href in b.parts]
            out.append('<ul class="artifacts">\n' + "\n".join(items) + "\n</ul>")
    body = "\n".join(out)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_esc(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def render_html(results: dict, others: list[dict] | None = None) -> str:
    """The self-contained HTML report of ``results`` (a loaded ``results.json``), compared with
    ``others`` (more loaded results) when given; figures are drawn here (without matplotlib: a note)."""
    return _to_html(_document(results, others or [], _draw(results)))


# ---------------------------------------------------------------- Markdown

_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|#"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;",
                                                                   "\n": " ", "\r": " "})


def _md_esc(text: str) -> str:
    return text.translate(_MD_SPECIAL)


def _md_code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _inline_md(parts: Iterable[Inline]) -> str:
    return "".join(_md_code(p.text) if isinstance(p, _Code) else _md_esc(p) for p in parts)


def _table_md(t: _Table) -> str:
    lines = ["| " + " | ".join(_md_esc(h) for h in t.headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in t.numeric) + "|"]
    lines += ["| " + " | ".join(_md_esc(c.text) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _figure_md(f: DrawnFigure) -> str:
    if f.png is None:
        return f"*Figure “{_md_esc(f.title)}” could not be drawn: {_md_esc(f.error or '')}*"
    return f"![{_md_esc(f.alt)}]({FIGURE_DIR}/{f.name}.png)\n\n*{_md_esc(f.title)}*"


def _to_markdown(blocks: list[_Block]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {_inline_md(b.parts)}")
        elif b.kind == "h2":
            out.append(f"## {_inline_md(b.parts)}")
        elif b.kind == "banner":
            out.append(f"> **{_inline_md(b.parts)}**")
        elif b.kind == "note":
            out.append(f"> {_inline_md(b.parts)}")
        elif b.kind in ("meta", "p"):
            out.append(_inline_md(b.parts))
        elif b.kind == "list":
            out.append("\n".join(f"- {_md_esc(item)}" for item in b.parts))
        elif b.kind == "table":
            out.append(_table_md(b.parts[0]))
        elif b.kind == "figures":
            out.append("\n\n".join(_figure_md(f) for f in b.parts))
        elif b.kind == "links":
            out.append("\n".join(f"- {_md_esc(k)}: [{_md_esc(v)}]({href})" if href else
                                 f"- {_md_esc(k)}: {_md_code(v)}" for k, v, href in b.parts))
    return "\n\n".join(out) + "\n"


def render_markdown(results: dict, others: list[dict] | None = None) -> str:
    """The Markdown twin of :func:`render_html`; it links the figures as ``figures/NAME.png``, which
    :func:`render` writes next to it."""
    return _to_markdown(_document(results, others or [], _draw(results)))


# ---------------------------------------------------------------- writing


def render(run_dir: str | os.PathLike[str],
           compare_with: Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
           ) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``figures/*.png`` into ``run_dir`` (all of them or,
    on a failure, none); return the paths of the two reports.

    ``compare_with``: other run folders to compare this run with (a table in both reports).
    Raises :class:`ConfigError` when a folder has no readable ``results.json``.
    """
    run = Path(run_dir)
    results = load_results(run)
    if isinstance(compare_with, (str, os.PathLike)):
        compare_with = [compare_with]
    others = [load_results(p) for p in compare_with or []]
    figs = _draw(results)
    blocks = _document(results, others, figs)
    html_text, md_text = _to_html(blocks), _to_markdown(blocks)
    fig_dir = run / FIGURE_DIR
    pngs = {f"{f.name}.png": f.png for f in figs or [] if f.png is not None}
    writes = [(fig_dir / name, lambda tmp, b=png: tmp.write_bytes(b)) for name, png in pngs.items()]
    writes += [(run / MD_NAME, lambda tmp: tmp.write_text(md_text, encoding="utf-8")),
               (run / HTML_NAME, lambda tmp: tmp.write_text(html_text, encoding="utf-8"))]
    had_fig_dir = fig_dir.exists()
    try:
        atomic_write_many(writes)
    except BaseException:
        if not had_fig_dir:  # the folder the failed write made for the figures: leave the run as it was
            with contextlib.suppress(OSError):
                fig_dir.rmdir()
        raise
    for name in _figures.NAMES:  # figures of an earlier render that this one does not link
        stale = fig_dir / f"{name}.png"
        if f"{name}.png" not in pngs and stale.is_file():
            stale.unlink()
    return run / HTML_NAME, run / MD_NAME
